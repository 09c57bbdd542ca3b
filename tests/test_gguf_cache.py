"""A GGUF dequantized once and kept (workers.miner.pipelines.gguf_cache) loads the same model: the same
tensors, the same tokens, the same answers, greedy and sampled; and a damaged or unwritable conversion costs
speed, never correctness."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from heurist.catalog import load_catalog
from heurist.jobs import TextParams
from workers.miner.device import detect_device
from workers.miner.pipelines import load_pipeline
from workers.miner.pipelines.backends.causal_lm import CausalLMPipeline
from workers.miner.pipelines.gguf_cache import MANIFEST, _save, is_intact, load_once

SPEC = load_catalog()["smollm2-135m"]
PROMPTS = ["What is the capital of France?", "Écris un haïku sur la neige ❄️"]


def _load(models_dir: Path) -> CausalLMPipeline:
    pipeline = load_pipeline(SPEC, detect_device("cpu"), models_dir)
    assert isinstance(pipeline, CausalLMPipeline)
    return pipeline


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def from_gguf(models_dir: Path) -> CausalLMPipeline:
    """The first load: read from the GGUF, and kept."""
    return _load(models_dir)


@pytest.fixture(scope="module")
def kept(models_dir: Path, from_gguf: CausalLMPipeline) -> Path:
    (directory,) = (models_dir / ".converted").iterdir()
    return directory


@pytest.fixture(scope="module")
def from_kept(models_dir: Path, kept: Path) -> CausalLMPipeline:
    return _load(models_dir)


def test_the_kept_conversion_is_named_by_the_attestation_and_is_intact(from_gguf: CausalLMPipeline,
                                                                       kept: Path) -> None:
    assert kept.name == f"smollm2-135m-{from_gguf.weights_sha256[:16]}-float32"
    assert is_intact(kept)
    assert {"model.safetensors", "config.json", "tokenizer.json", MANIFEST} <= {p.name for p in kept.iterdir()}
    assert not [p for p in kept.parent.iterdir() if ".tmp-" in p.name]  # no staging directory left behind


def test_the_second_load_reads_the_conversion_and_gives_the_same_model(from_gguf: CausalLMPipeline,
                                                                       from_kept: CausalLMPipeline) -> None:
    assert getattr(from_gguf.model, "hf_quantizer", None) is not None  # transformers' mark of a GGUF load
    assert getattr(from_kept.model, "hf_quantizer", None) is None  # so this one did not read the GGUF
    assert from_kept.weights_sha256 == from_gguf.weights_sha256  # the attestation is still the GGUF's
    a, b = from_gguf.model.state_dict(), from_kept.model.state_dict()
    assert a.keys() == b.keys()
    assert all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)
    assert from_kept.tokenizer.chat_template == from_gguf.tokenizer.chat_template
    assert (from_kept.eos_ids, from_kept.pad_id) == (from_gguf.eos_ids, from_gguf.pad_id)
    for prompt in PROMPTS:
        assert from_kept.encode_prompt(prompt) == from_gguf.encode_prompt(prompt)


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_both_answer_alike(from_gguf: CausalLMPipeline, from_kept: CausalLMPipeline, temperature: float) -> None:
    for prompt in PROMPTS:
        params = TextParams(prompt=prompt, max_tokens=24, temperature=temperature, seed=7)
        later = time.time() + 300
        assert from_kept.run(params, later).data == from_gguf.run(params, later).data


def test_a_damaged_conversion_is_rebuilt_not_loaded(tmp_path: Path, kept: Path, from_gguf: CausalLMPipeline) -> None:
    damaged = tmp_path / kept.name
    shutil.copytree(kept, damaged)
    with open(damaged / "model.safetensors", "r+b") as f:
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 1]))
    assert not is_intact(damaged)
    calls: list[str] = []

    def source() -> tuple[object, object]:
        calls.append("gguf")
        return from_gguf.tokenizer, from_gguf.model

    def converted(directory: Path) -> tuple[object, object]:
        raise AssertionError(f"loaded the damaged {directory}")

    load_once(damaged, source, converted)
    assert calls == ["gguf"] and is_intact(damaged)
    rebuilt, original = load_file(damaged / "model.safetensors"), load_file(kept / "model.safetensors")
    assert rebuilt.keys() == original.keys()
    assert [k for k in original if not torch.equal(rebuilt[k], original[k])] == []


def test_a_concurrent_conversion_keeps_the_first_and_an_unwritable_place_still_loads(
        tmp_path: Path, kept: Path, from_gguf: CausalLMPipeline, caplog: pytest.LogCaptureFixture) -> None:
    def source() -> tuple[object, object]:
        return from_gguf.tokenizer, from_gguf.model

    first = tmp_path / "a" / kept.name
    shutil.copytree(kept, first)
    before = (first / MANIFEST).stat().st_mtime_ns
    load_once(first.with_name("other"), source, lambda d: pytest.fail("nothing was there to load"))
    assert is_intact(first.with_name("other"))
    _save(first, from_gguf.tokenizer, from_gguf.model)  # the loser of a race: the intact winner stays
    assert (first / MANIFEST).stat().st_mtime_ns == before and is_intact(first)
    assert not [p for p in first.parent.iterdir() if ".tmp-" in p.name]

    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    _, model = load_once(blocked / kept.name, source, lambda d: pytest.fail("nothing to load"))
    assert model is from_gguf.model
    assert "could not keep the dequantized model" in caplog.text and "reads the GGUF again" in caplog.text
