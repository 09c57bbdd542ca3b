"""Text audit: teacher-force a miner's claimed output tokens through the model once and judge them.

One forward pass over prompt ids + claimed output ids (no generation, so ~0.1x the cost of answering) gives
the model's next-token logits at every output position. Greedy jobs (temperature 0) must pick the argmax at
every step (up to a near-tie tolerance); sampled jobs must look like draws from the temperature-scaled
distribution (a calibrated log-probability score, see ``TextBands``). Counts, finish reason and text are
checked against the token ids, so a miner cannot inflate what the ledger prices by or truncate silently.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch

from heurist.jobs import TextOutput, TextParams
from workers.miner.pipelines.backends.causal_lm import CausalLMPipeline

LATER = 3600.0  # seconds: a deadline no cost measurement reaches


@dataclass(frozen=True)
class TextBands:
    """Pass bands for the text audit, set from measurements on SmolLM2-135M (CPU, float32, 16-32 tokens).

    ====================================  ========================================================
    measurement                           value
    ====================================  ========================================================
    honest greedy, generated with 1        0 argmax flips over 55 answers (20x32 + 20x16 + 15x16
      torch thread, checked with 2           tokens); 0/15 false positives in the test
    logit noise: threads 1 vs 2, and       max |dlogit| 6.6e-5 (20 answers x 16 tokens)
      KV-cache generate vs full forward
    real top1-top2 logit gaps (~500 pos)   min 2e-4, 1st pct 0.009, 5th pct 0.09, median 1.28
    honest sampled T=0.7 (12 answers)      z -2.0..1.2, mean log-prob -2.46..-0.30
    random token ids (20 answers)          z -33.8..-12.1, mean log-prob -21.0..-14.8
    other prompt's answer, T=0.7 job       z -7.6..-2.7 (7/10 below -5), mean log-prob -6.2..-2.2
    ====================================  ========================================================

    ``tie_eps``: logits within this of the max count as top-1; 0.01 is ~150x the measured CPU noise and
    lets the runner-up through at ~1% of positions (real near-ties, where either token is fine).
    GPU float16 miners were not measured and may need it wider.
    ``min_sampled_z``: lower bound on sum(logp_t + H_t) / sqrt(sum Var_t) for sampled jobs, where logp_t
    is the claimed token's log-prob under the temperature-scaled distribution, H_t its entropy and Var_t
    the variance of logp under it: an honest sampler scores ~N(0, 1) (skewed left), other sources lower.
    ``min_mean_logprob``: a floor on the mean claimed-token log-prob for sampled jobs (garbage guard
    that does not depend on the variance estimate).
    """

    tie_eps: float = 0.01
    min_sampled_z: float = -5.0
    min_mean_logprob: float = -6.0


DEFAULT_TEXT_BANDS = TextBands()


@dataclass(frozen=True)
class TextVerdict:
    """The audit's answer for one text job, with the numbers it was decided on (for the ledger entry)."""

    passed: bool
    reason: str
    tokens_checked: int
    mean_logprob: float
    worst_rank: int
    fraction_top1: float
    input_tokens_ok: bool
    output_tokens_ok: bool
    cost_s: float
    z_score: float = 0.0


@dataclass(frozen=True)
class TokenStats:
    """Per-token numbers from one teacher-forced pass (log-probs at the job's temperature)."""

    logprobs: list[float]
    ranks: list[int]
    entropy: list[float]
    variance: list[float]

    def z_score(self) -> float:
        """How far the claimed tokens fall below what an honest sampler would score, in std devs."""
        spread = math.sqrt(sum(self.variance) + 1e-6)
        return sum(lp + h for lp, h in zip(self.logprobs, self.entropy, strict=True)) / spread


def teacher_force(
    pipeline: CausalLMPipeline, prompt_ids: list[int], ids: list[int], temperature: float, tie_eps: float
) -> TokenStats:
    """One forward pass over prompt + claimed ids: each claimed token's log-prob, rank and the step's entropy."""
    inputs = torch.tensor([prompt_ids + ids], device=pipeline.device.torch_device)
    with torch.inference_mode():
        out: Any = pipeline.model(input_ids=inputs, logits_to_keep=len(ids) + 1)
    logits = out.logits[0, :-1].float()
    claimed = torch.tensor(ids, device=logits.device)
    chosen = logits.gather(1, claimed[:, None])
    ranks = (logits > chosen + tie_eps).sum(dim=1)
    logp = torch.log_softmax(logits / (temperature if temperature > 0 else 1.0), dim=-1)
    probs = logp.exp()
    entropy = -(probs * logp).sum(dim=1)
    second = (probs * logp.square()).sum(dim=1)
    return TokenStats(
        logprobs=logp.gather(1, claimed[:, None])[:, 0].tolist(),
        ranks=[int(r) for r in ranks.tolist()],
        entropy=entropy.tolist(),
        variance=(second - entropy.square()).clamp(min=0).tolist(),
    )


def _structure_problem(pipeline: CausalLMPipeline, params: TextParams, claimed: TextOutput) -> str | None:
    """What is wrong with the claim before looking at the model (counts, ids, text, finish reason), if anything."""
    ids = claimed.output_token_ids
    vocab = pipeline.model.get_input_embeddings().num_embeddings
    if any(not 0 <= t < vocab for t in ids):
        return "token id out of the vocabulary"
    if claimed.output_tokens != len(ids) or len(ids) > params.max_tokens:
        return f"output_tokens {claimed.output_tokens} != {len(ids)} ids (max_tokens {params.max_tokens})"
    if pipeline.tokenizer.decode(ids, skip_special_tokens=True) != claimed.text:
        return "text is not the decoding of output_token_ids"
    return _finish_problem(pipeline, params, claimed)


def _finish_problem(pipeline: CausalLMPipeline, params: TextParams, claimed: TextOutput) -> str | None:
    """Generation stops at the first EOS: "stop" must end on it, "length" must use every token allowed."""
    ids = claimed.output_token_ids
    if any(t in pipeline.eos_ids for t in ids[:-1]):
        return "EOS inside the answer"
    ends_on_eos = bool(ids) and ids[-1] in pipeline.eos_ids
    if claimed.finish_reason == "stop" and not ends_on_eos:
        return "finish 'stop' without a final EOS (truncated)"
    if claimed.finish_reason == "length" and (ends_on_eos or len(ids) != params.max_tokens):
        return f"finish 'length' with {len(ids)} of {params.max_tokens} tokens"
    if claimed.finish_reason == "deadline" and ends_on_eos:
        return "finish 'deadline' on an EOS"
    return None


def _model_problem(stats: TokenStats, params: TextParams, bands: TextBands) -> str | None:
    """Greedy: every token is (near-)argmax. Sampled: the tokens score like honest draws at the temperature."""
    if not stats.logprobs:
        return None
    if params.temperature == 0:
        misses = sum(r > 0 for r in stats.ranks)
        return f"{misses} token(s) are not the greedy choice" if misses else None
    mean = statistics.fmean(stats.logprobs)
    if mean < bands.min_mean_logprob:
        return f"mean log-prob {mean:.2f} below {bands.min_mean_logprob}"
    z = stats.z_score()
    return f"sampling score z={z:.1f} below {bands.min_sampled_z}" if z < bands.min_sampled_z else None


def check_text(
    pipeline: CausalLMPipeline, params: TextParams, claimed: TextOutput, bands: TextBands = DEFAULT_TEXT_BANDS
) -> TextVerdict:
    """Audit one text job's claimed output against the model with a single teacher-forced pass."""
    started = time.perf_counter()
    prompt_ids = pipeline.encode_prompt(params.prompt)
    input_ok = claimed.input_tokens == len(prompt_ids)
    problem = _structure_problem(pipeline, params, claimed)
    ids = claimed.output_token_ids
    output_ok = claimed.output_tokens == len(ids) <= params.max_tokens
    if problem is None and not input_ok:
        problem = f"input_tokens {claimed.input_tokens} != {len(prompt_ids)} prompt tokens"
    stats = TokenStats([], [], [], [])
    if problem is None and ids:
        stats = teacher_force(pipeline, prompt_ids, ids, params.temperature, bands.tie_eps)
        problem = _model_problem(stats, params, bands)
    n = len(stats.logprobs)
    return TextVerdict(
        passed=problem is None,
        reason=problem or "ok",
        tokens_checked=n,
        mean_logprob=statistics.fmean(stats.logprobs) if n else 0.0,
        worst_rank=max(stats.ranks, default=0),
        fraction_top1=sum(r == 0 for r in stats.ranks) / n if n else 0.0,
        input_tokens_ok=input_ok,
        output_tokens_ok=output_ok,
        cost_s=time.perf_counter() - started,
        z_score=stats.z_score() if n else 0.0,
    )


def audit_cost_ratio(pipeline: CausalLMPipeline, params: TextParams, runs: int = 3) -> float:
    """Median time to audit a job / median time to generate it, measured side by side on the same pipeline."""
    generate_s: list[float] = []
    check_s: list[float] = []
    for _ in range(runs):
        started = time.perf_counter()
        claimed = pipeline.complete(params, time.time() + LATER)
        generate_s.append(time.perf_counter() - started)
        started = time.perf_counter()
        check_text(pipeline, params, claimed)
        check_s.append(time.perf_counter() - started)
    return statistics.median(check_s) / statistics.median(generate_s)
