"""Text audit on SmolLM2: honest answers pass across thread counts, each kind of cheat fails (catch rates printed)."""

from __future__ import annotations

import copy
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # never reach a model hub from tests (set before hub libraries import)

import torch

from heurist.catalog import load_catalog
from heurist.jobs import TextOutput, TextParams
from workers.audit.text_check import TextVerdict, audit_cost_ratio, check_text
from workers.miner.device import detect_device
from workers.miner.pipelines import load_pipeline
from workers.miner.pipelines.backends.causal_lm import CausalLMPipeline

LATER = 3600.0
MAX_TOKENS = 16
PROMPTS = [
    "What is the capital of France?", "Name three primary colors.", "Write a haiku about the sea.",
    "Explain photosynthesis in one sentence.", "What is 12 times 7?", "Give me a synonym for happy.",
    "Who wrote Romeo and Juliet?", "List two uses of copper.", "Translate 'good morning' into Spanish.",
    "Why is the sky blue?", "Describe a cat in five words.", "What does a compiler do?",
    "Suggest a name for a pet goldfish.", "How many legs does a spider have?", "What is the boiling point of water?",
]
CHEAT_PROMPTS = PROMPTS[:10]

# Calibration sweeps (dozens of replays): `make test-slow`, run by CI after `make test`.
pytestmark = pytest.mark.slow


def job(prompt: str, temperature: float = 0.0, seed: int = 0) -> TextParams:
    return TextParams(prompt=prompt, max_tokens=MAX_TOKENS, temperature=temperature, seed=seed)


class Threads:
    """Run a block with a given torch thread count, restoring the original after."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.before = torch.get_num_threads()

    def __enter__(self) -> None:
        torch.set_num_threads(self.n)

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self.before)


@pytest.fixture(scope="session")
def smollm_audit(shared_models_dir: Path) -> CausalLMPipeline:
    pipeline = load_pipeline(load_catalog()["smollm2-135m"], detect_device("cpu"), shared_models_dir)
    assert isinstance(pipeline, CausalLMPipeline)
    return pipeline


def answer(pipeline: CausalLMPipeline, params: TextParams) -> TextOutput:
    with Threads(1):
        return pipeline.complete(params, time.time() + LATER)


def audit(pipeline: CausalLMPipeline, params: TextParams, claimed: TextOutput) -> TextVerdict:
    with Threads(2):
        return check_text(pipeline, params, claimed)


@pytest.fixture(scope="module")
def greedy(smollm_audit: CausalLMPipeline) -> dict[str, TextOutput]:
    return {p: answer(smollm_audit, job(p)) for p in PROMPTS}


@pytest.fixture(scope="module")
def sampled(smollm_audit: CausalLMPipeline) -> dict[TextParams, TextOutput]:
    jobs = [job(p, 0.7, seed) for p in PROMPTS[:4] for seed in (1, 2, 3)]
    return {params: answer(smollm_audit, params) for params in jobs}


def report(name: str, verdicts: list[TextVerdict]) -> int:
    caught = sum(not v.passed for v in verdicts)
    lows = [round(v.mean_logprob, 2) for v in verdicts]
    zs = [round(v.z_score, 1) for v in verdicts]
    print(f"\n{name}: caught {caught}/{len(verdicts)} mean_logprob {min(lows)}..{max(lows)} z {min(zs)}..{max(zs)}")
    return caught


def with_ids(pipeline: CausalLMPipeline, claimed: TextOutput, ids: list[int], finish: str) -> TextOutput:
    text = pipeline.tokenizer.decode(ids, skip_special_tokens=True)
    return claimed.model_copy(update={"output_token_ids": ids, "output_tokens": len(ids), "text": text,
                                      "finish_reason": finish})


def test_honest_greedy_passes_across_thread_counts(smollm_audit: CausalLMPipeline,
                                                   greedy: dict[str, TextOutput]) -> None:
    verdicts = [audit(smollm_audit, job(p), out) for p, out in greedy.items()]
    assert report("honest greedy (false positives)", verdicts) == 0, [v.reason for v in verdicts]
    assert all(v.fraction_top1 == 1.0 and v.worst_rank == 0 and v.input_tokens_ok for v in verdicts)
    assert all(v.tokens_checked == out.output_tokens for v, out in zip(verdicts, greedy.values(), strict=True))


def test_honest_sampled_passes(smollm_audit: CausalLMPipeline, sampled: dict[TextParams, TextOutput]) -> None:
    verdicts = [audit(smollm_audit, params, out) for params, out in sampled.items()]
    assert report("honest sampled T=0.7 (false positives)", verdicts) == 0, [v.reason for v in verdicts]


@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_random_token_ids_fail(smollm_audit: CausalLMPipeline, greedy: dict[str, TextOutput],
                               temperature: float) -> None:
    rng = random.Random(7)
    verdicts = []
    for p in CHEAT_PROMPTS:
        ids = [rng.randrange(49152) for _ in range(MAX_TOKENS)]
        verdicts.append(audit(smollm_audit, job(p, temperature, 1), with_ids(smollm_audit, greedy[p], ids, "length")))
    assert report(f"random ids T={temperature}", verdicts) == len(verdicts)


@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_answer_to_another_prompt_fails(smollm_audit: CausalLMPipeline, greedy: dict[str, TextOutput],
                                        temperature: float) -> None:
    verdicts = []
    for i, p in enumerate(CHEAT_PROMPTS):
        claimed = greedy[PROMPTS[i + 1]].model_copy(update={"input_tokens": greedy[p].input_tokens})
        verdicts.append(audit(smollm_audit, job(p, temperature, 1), claimed))
    caught = report(f"other prompt's answer T={temperature}", verdicts)
    # greedy: always caught; sampled: a generic fluent answer can look like a draw at T=0.7 (measured 7/10)
    assert caught == len(verdicts) if temperature == 0 else caught >= 0.6 * len(verdicts)


def test_truncated_answer_claimed_as_stop_fails(smollm_audit: CausalLMPipeline,
                                                greedy: dict[str, TextOutput]) -> None:
    eos = min(smollm_audit.eos_ids)
    bare, with_eos = [], []
    for p in CHEAT_PROMPTS:
        half = greedy[p].output_token_ids[: max(1, greedy[p].output_tokens // 2)]
        bare.append(audit(smollm_audit, job(p), with_ids(smollm_audit, greedy[p], half, "stop")))
        with_eos.append(audit(smollm_audit, job(p), with_ids(smollm_audit, greedy[p], [*half, eos], "stop")))
    assert report("truncated, finish stop", bare) == len(bare)
    assert report("truncated + EOS appended, finish stop", with_eos) == len(with_eos)


def test_inflated_counts_fail(smollm_audit: CausalLMPipeline, greedy: dict[str, TextOutput]) -> None:
    outputs = [audit(smollm_audit, job(p), greedy[p].model_copy(update={"output_tokens": greedy[p].output_tokens + 5}))
               for p in CHEAT_PROMPTS]
    inputs = [audit(smollm_audit, job(p), greedy[p].model_copy(update={"input_tokens": greedy[p].input_tokens + 20}))
              for p in CHEAT_PROMPTS]
    assert report("output_tokens inflated", outputs) == len(outputs)
    assert not any(v.output_tokens_ok for v in outputs)
    assert report("input_tokens inflated", inputs) == len(inputs)
    assert not any(v.input_tokens_ok for v in inputs)


def test_greedy_job_answered_by_sampling_is_mostly_caught(smollm_audit: CausalLMPipeline) -> None:
    verdicts = []
    for p in CHEAT_PROMPTS:
        sampled = answer(smollm_audit, job(p, 1.0, 5))
        verdicts.append(audit(smollm_audit, job(p), sampled))
    assert report("greedy job answered by T=1.0 sampling", verdicts) >= 0.8 * len(verdicts)


@pytest.fixture()
def noisy_model(smollm_audit: CausalLMPipeline) -> Iterator[CausalLMPipeline]:
    """A 'cheaper model': a deep copy of the pipeline whose weight matrices get 5% (of their std) Gaussian noise."""
    cheap = copy.copy(smollm_audit)
    cheap.model = copy.deepcopy(smollm_audit.model)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for weight in cheap.model.parameters():
            if weight.dim() >= 2:
                weight.add_(torch.randn(weight.shape, generator=generator) * weight.std() * 0.05)
    yield cheap
    del cheap.model


def test_cheaper_model_fails_greedy(smollm_audit: CausalLMPipeline, noisy_model: CausalLMPipeline) -> None:
    verdicts = [audit(smollm_audit, job(p), answer(noisy_model, job(p))) for p in CHEAT_PROMPTS]
    assert report("cheaper (noised) model, greedy", verdicts) >= 0.8 * len(verdicts)


def test_audit_costs_a_fraction_of_generating(smollm_audit: CausalLMPipeline) -> None:
    with Threads(1):  # one thread: a shared CI box makes two-thread timings erratic
        ratio = audit_cost_ratio(smollm_audit, TextParams(prompt=PROMPTS[2], max_tokens=32), runs=2)
    print(f"\naudit_cost_ratio (32 tokens): {ratio:.3f}")
    assert 0 < ratio < 0.5
