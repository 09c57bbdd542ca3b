"""SmolLM2 jobs batched (issue 17): each row answers as it would alone (greedy and seeded), stops on its own
(eos, max_tokens, deadline) and streams only its own tokens; a real miner on RabbitMQ batches concurrent jobs."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # never reach a model hub from tests (set before hub libraries import)

import torch

from heurist.catalog import load_catalog
from heurist.client import Client
from heurist.client_types import TextRequest
from heurist.embedded import EmbeddedNetwork, heurist_cmd, wait_until
from heurist.jobs import JobState, TextOutput, TextParams
from workers.miner.device import detect_device
from workers.miner.pipelines import load_pipeline
from workers.miner.pipelines.backend import BatchItem, PipelineOutput
from workers.miner.pipelines.backends.causal_lm import CausalLMPipeline

MODEL = "smollm2-135m"
PROMPTS = (  # six prompt lengths: rows are left-padded by different amounts
    "Hi",
    "What is 2+2?",
    "Name three colors.",
    "Why is the sky blue?",
    "Write a poem about the sea and the rain and the wind.",
    "Explain how a lighthouse works, in detail, for a child of ten who has never seen the sea.",
)


@pytest.fixture(scope="module")
def smollm(shared_models_dir: Path) -> Iterator[CausalLMPipeline]:
    """On one torch thread while this module runs: on a 2-core box shared with other tests, 2 threads made a
    decoding step 5x slower (0.5 s against 0.1 s), their OpenMP workers spinning against other processes."""
    threads = torch.get_num_threads()
    pipeline = load_pipeline(load_catalog()[MODEL], detect_device("cpu", threads=1), shared_models_dir)
    assert isinstance(pipeline, CausalLMPipeline)
    yield pipeline
    torch.set_num_threads(threads)


def later() -> float:
    return time.time() + 3600


def text(prompt: str, max_tokens: int, temperature: float = 0.0, seed: int = 0) -> TextParams:
    return TextParams(prompt=prompt, max_tokens=max_tokens, temperature=temperature, seed=seed)


def answers(outputs: list[PipelineOutput | BaseException]) -> list[TextOutput]:
    assert all(isinstance(o, PipelineOutput) for o in outputs), outputs
    return [TextOutput.model_validate_json(o.data) for o in outputs]  # type: ignore[union-attr]


def test_batched_greedy_answers_equal_the_ones_decoded_alone(smollm: CausalLMPipeline) -> None:
    assert len({len(smollm.encode_prompt(p)) for p in PROMPTS}) == len(PROMPTS)
    params = [text(p, 12) for p in PROMPTS]
    alone = [smollm.run(p, later()).data for p in params]
    together = smollm.run_batch([BatchItem(p, later()) for p in params])
    assert [o.data for o in together] == alone  # type: ignore[union-attr]
    pair = smollm.run_batch([BatchItem(params[5], later()), BatchItem(params[0], later())])
    assert [o.data for o in pair] == [alone[5], alone[0]]  # type: ignore[union-attr]


def test_each_row_stops_at_its_own_max_tokens_or_end_of_sequence(smollm: CausalLMPipeline) -> None:
    params = [text(PROMPTS[4], 3), text(PROMPTS[0], 20), text(PROMPTS[5], 13)]
    got = answers(smollm.run_batch([BatchItem(p, later()) for p in params]))
    assert [(a.output_tokens, a.finish_reason) for a in (got[0], got[2])] == [(3, "length"), (13, "length")]
    assert got[1].finish_reason == "stop" and got[1].output_tokens < 13  # "Hi" is answered in 10 tokens
    assert got[1].output_token_ids[-1] in smollm.eos_ids
    assert got == [smollm.complete(p, later()) for p in params]


def test_a_deadline_mid_batch_cuts_only_its_own_job(smollm: CausalLMPipeline) -> None:
    finished: dict[int, float] = {}
    params = [text(PROMPTS[5], 32), text(PROMPTS[4], 16), text(PROMPTS[3], 16), text(PROMPTS[1], 8)]
    deadlines = [time.time() + 0.2, later(), later(), time.time() - 1]  # the last one is late before it starts
    items = [BatchItem(p, d, on_done=lambda out, n=n: finished.setdefault(n, time.monotonic()))
             for n, (p, d) in enumerate(zip(params, deadlines, strict=True))]
    got = answers(smollm.run_batch(items))
    ended = time.monotonic()
    cut, late = got[0], got[3]
    assert cut.finish_reason == "deadline" and 0 < cut.output_tokens < 16  # a step here takes 0.05 s or more
    assert (late.finish_reason, late.output_tokens, late.text) == ("deadline", 0, "") and late.input_tokens > 0
    assert got[1:3] == [smollm.complete(p, later()) for p in params[1:3]]  # the others ran on, unchanged
    assert finished[0] < finished[1] and finished[0] < finished[2] <= ended  # handed over when it stopped
    print(f"\ncut at {cut.output_tokens} tokens, {min(finished[1], finished[2]) - finished[0]:.1f} s before the others")


def test_each_job_streams_only_its_own_tokens_from_a_batch(smollm: CausalLMPipeline) -> None:
    streamed: dict[int, list[tuple[int, str]]] = {0: [], 1: [], 2: []}
    params = [text(PROMPTS[0], 12), text("Say something in Japanese and French: 日本語, é.", 12), text(PROMPTS[3], 6)]
    items = [BatchItem(p, later(), on_token=None if n == 2 else lambda token, delta, n=n: streamed[n].append(
        (token, delta))) for n, p in enumerate(params)]
    got = answers(smollm.run_batch(items))
    for n in (0, 1):
        assert [token for token, _ in streamed[n]] == got[n].output_token_ids
        assert "".join(delta for _, delta in streamed[n]) == got[n].text
    assert streamed[2] == [] and got[2].output_tokens == 6
    assert got == [smollm.complete(p, later()) for p in params]


def test_seeded_sampling_gives_the_same_answer_batched_and_alone(smollm: CausalLMPipeline) -> None:
    params = [text(PROMPTS[4], 10, temperature=0.9, seed=7), text(PROMPTS[4], 10, temperature=0.9, seed=8),
              text(PROMPTS[3], 10), text(PROMPTS[2], 10, temperature=1.3, seed=7)]
    alone = [smollm.complete(p, later()) for p in params]
    assert alone[0].output_token_ids != alone[1].output_token_ids  # the seed matters
    assert answers(smollm.run_batch([BatchItem(p, later()) for p in params])) == alone
    assert answers(smollm.run_batch([BatchItem(p, later()) for p in (params[3], params[0])])) == [alone[3], alone[0]]


# --- a real miner on RabbitMQ -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def miner_log(network: EmbeddedNetwork, client: Client) -> Path:
    """`heurist miner` serving SmolLM2, batches of up to 4, logging each batch (INFO)."""
    wallet, key_file = network.new_key_file("batcher")
    argv = heurist_cmd("miner", "--key-file", str(key_file), "--models", MODEL, "--device", "cpu",
                       "--loglevel", "INFO")
    env = network.miner_env(network.own_broker_url(wallet.address))
    network.spawn("batcher", argv, env | {"HEURIST_MINER_MAX_BATCH": "4", "HEURIST_MINER_BATCH_WINDOW_MS": "500"})
    wait_until(lambda: client.ledger.is_registered(wallet.address), 300, "the miner to register",
               check=network.check_alive)
    return network.logs / "batcher.log"


@pytest.mark.slow
def test_a_miner_runs_concurrent_jobs_as_batches(client: Client, miner_log: Path,
                                                 smollm: CausalLMPipeline) -> None:
    prompts = PROMPTS[1:6]
    handles = client.submit_many([TextRequest(p, MODEL, max_tokens=8) for p in prompts])
    views = client.wait_all([h.id for h in handles], timeout=300)
    assert [v.state for v in views] == [JobState.COMPLETED] * 5
    for handle, prompt in zip(handles, prompts, strict=True):
        assert handle.download() == smollm.run(text(prompt, 8), later()).data  # as the job alone makes it
    sizes = [int(n) for n in re.findall(rf"{MODEL}: a batch of (\d+) job", miner_log.read_text())]
    print(f"\nbatches: {sizes}")
    assert sum(sizes) == 5 and max(sizes) >= 2 and len(sizes) < 5
