"""Pipelines on CPU: tiny-sd images and SmolLM2 text, deterministic, counted, and stopped by the deadline."""

from __future__ import annotations

import hashlib
import io
import os
import time
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # never reach a model hub from tests (set before hub libraries import)

import torch
from PIL import Image

from heurist.catalog import load_catalog
from heurist.catalog.lock import read_lock
from heurist.errors import ConfigError, InvalidJobError
from heurist.jobs import ImageParams, TextOutput, TextParams
from workers.miner.device import Device, detect_device, list_cuda_devices
from workers.miner.pipelines import DeadlineExceeded, Pipeline, load_pipeline
from workers.miner.pipelines.backends.causal_lm import CausalLMPipeline
from workers.miner.pipelines.backends.diffusion import DiffusionPipeline
from workers.miner.tiny_sd import build_tiny_sd

CATALOG = load_catalog()
LATER = 3600.0  # seconds: a deadline no test reaches


@pytest.fixture(scope="session")
def cpu() -> Device:
    return detect_device("cpu")


@pytest.fixture(scope="session")
def tiny_sd(shared_models_dir: Path, cpu: Device) -> Pipeline:
    return load_pipeline(CATALOG["tiny-sd"], cpu, shared_models_dir)


@pytest.fixture(scope="session")
def smollm(shared_models_dir: Path, cpu: Device) -> CausalLMPipeline:
    pipeline = load_pipeline(CATALOG["smollm2-135m"], cpu, shared_models_dir)
    assert isinstance(pipeline, CausalLMPipeline)
    return pipeline


def image(seed: int, steps: int = 20, width: int = 64, height: int = 64) -> ImageParams:
    return ImageParams(prompt="a lighthouse at dawn", negative_prompt="blurry", width=width, height=height,
                       steps=steps, guidance=7.5, seed=seed)


def text(prompt: str, max_tokens: int, temperature: float = 0.0, seed: int = 0) -> TextParams:
    return TextParams(prompt=prompt, max_tokens=max_tokens, temperature=temperature, seed=seed)


def test_cpu_device_reports_ram_and_threads(cpu: Device) -> None:
    assert cpu.torch_device == "cpu" and cpu.info.kind == "cpu"
    assert cpu.info.vram_gb > 0.5
    assert cpu.info.torch_threads == torch.get_num_threads()
    if not torch.cuda.is_available():
        assert detect_device().torch_device == "cpu"
        assert list_cuda_devices() == []
        with pytest.raises(ConfigError, match="CUDA"):
            detect_device("cuda")
    with pytest.raises(ConfigError, match="unknown device"):
        detect_device("tpu")


def test_tiny_sd_build_is_deterministic(tmp_path: Path, shared_models_dir: Path) -> None:
    hashes = build_tiny_sd(tmp_path / "tiny-sd")
    assert hashes == read_lock(shared_models_dir)["tiny-sd"] == read_lock(tmp_path)["tiny-sd"]
    root = tmp_path / "tiny-sd"
    assert sorted(hashes) == sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_image_is_a_png_of_the_asked_size_and_fixed_by_the_seed(tiny_sd: Pipeline) -> None:
    assert isinstance(tiny_sd, DiffusionPipeline)
    first = tiny_sd.run(image(seed=1), time.time() + LATER)
    again = tiny_sd.run(image(seed=1), time.time() + LATER)
    other = tiny_sd.run(image(seed=2), time.time() + LATER)
    assert first.content_type == "image/png"
    assert first.input_tokens == first.output_tokens == 0
    with Image.open(io.BytesIO(first.data)) as png:
        assert (png.format, png.size, png.mode) == ("PNG", (64, 64), "RGB")
        assert len(set(png.getdata())) > 100  # a real picture, not a flat colour
    assert first.data == again.data
    assert hashlib.sha256(first.data).digest() != hashlib.sha256(other.data).digest()
    assert b"tEXt" not in first.data and b"iTXt" not in first.data and b"tIME" not in first.data


def test_image_size_follows_params(tiny_sd: Pipeline) -> None:
    out = tiny_sd.run(image(seed=5, steps=2, width=96, height=64), time.time() + LATER)
    with Image.open(io.BytesIO(out.data)) as png:
        assert png.size == (96, 64)


def test_image_past_deadline_raises_before_or_between_steps(tiny_sd: Pipeline) -> None:
    with pytest.raises(DeadlineExceeded, match="before starting"):
        tiny_sd.run(image(seed=1), time.time() - 1)
    started = time.perf_counter()
    with pytest.raises(DeadlineExceeded, match="after step"):
        tiny_sd.run(image(seed=1, steps=500), time.time() + 0.2)
    assert time.perf_counter() - started < 10  # 500 steps would take ~20 s: it stopped between steps


def test_image_pipeline_refuses_text_jobs(tiny_sd: Pipeline) -> None:
    with pytest.raises(InvalidJobError, match="makes images"):
        tiny_sd.run(text("hi", 4), time.time() + LATER)


def test_text_output_is_counted_json(smollm: CausalLMPipeline) -> None:
    prompt = "What is the capital of France?"
    out = smollm.run(text(prompt, 64), time.time() + LATER)
    assert out.content_type == "application/json"
    result = TextOutput.model_validate_json(out.data)
    chat = smollm.tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                                add_generation_prompt=True, tokenize=False)
    assert result.input_tokens == len(smollm.tokenizer(chat, add_special_tokens=False)["input_ids"])
    assert result.output_tokens == len(result.output_token_ids) > 0
    assert (out.input_tokens, out.output_tokens) == (result.input_tokens, result.output_tokens)
    assert result.finish_reason == "stop"
    assert result.output_token_ids[-1] == smollm.tokenizer.eos_token_id
    assert smollm.tokenizer.decode(result.output_token_ids, skip_special_tokens=True) == result.text
    assert "Paris" in result.text
    assert smollm.run(text(prompt, 64), time.time() + LATER).data == out.data  # greedy: replayable


def test_text_stops_at_max_tokens_with_length(smollm: CausalLMPipeline) -> None:
    out = smollm.run(text("Tell me a long story.", 3), time.time() + LATER)
    result = TextOutput.model_validate_json(out.data)
    assert result.finish_reason == "length"
    assert result.output_tokens == len(result.output_token_ids) == 3


def test_sampling_is_seeded_and_leaves_global_rng_alone(smollm: CausalLMPipeline) -> None:
    rng = torch.get_rng_state()
    prompt = "Write a poem about rain."
    deadline = time.time() + LATER
    runs = [smollm.complete(text(prompt, 12, temperature=1.0, seed=s), deadline) for s in (7, 7, 8)]
    assert torch.equal(rng, torch.get_rng_state())
    assert runs[0] == runs[1]
    assert runs[0].output_token_ids != runs[2].output_token_ids


def test_text_deadline_before_and_during_generation(smollm: CausalLMPipeline) -> None:
    late = TextOutput.model_validate_json(smollm.run(text("Hello", 16), time.time() - 1).data)
    assert (late.finish_reason, late.output_tokens, late.text) == ("deadline", 0, "")
    assert late.input_tokens > 0
    started = time.perf_counter()
    cut = smollm.complete(text("Write a very long essay about the sea.", 512), time.time() + 0.3)
    assert cut.finish_reason == "deadline"
    assert 0 < cut.output_tokens < 512
    assert time.perf_counter() - started < 10


def test_stream_yields_the_same_text(smollm: CausalLMPipeline) -> None:
    params = text("What is the capital of France?", 64)
    pieces = list(smollm.stream(params, time.time() + LATER))
    assert len(pieces) > 1
    assert "".join(pieces).strip() == smollm.complete(params, time.time() + LATER).text.strip()


def test_text_pipeline_refuses_image_jobs(smollm: CausalLMPipeline) -> None:
    with pytest.raises(InvalidJobError, match="writes text"):
        smollm.run(image(seed=1), time.time() + LATER)
