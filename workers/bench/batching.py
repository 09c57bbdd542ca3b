"""`heurist bench batching`: text jobs run concurrently through the miner's batching vs one after another.

The same jobs (distinct prompts, greedy, the same ``max_tokens``) run on one loaded model both ways, after a
warm-up of each: one after another through ``pipeline.run``, as a miner without batching does, then all at once
from as many threads through ``workers.miner.batches.ModelBatches``, the path a miner's job threads take, which
runs them in one batched ``generate``. The two sides take turns for ``repeat`` rounds and the medians count: on a
shared machine one round's ratio swung from 2.8 to 5.9. The answers must be equal byte for byte (a greedy row
decodes alone and batched alike); a job whose answers differ in any round is named.

Measured on the 2-core CPU this was written on, shared with other work, SmolLM2-135M, 8 jobs of 64 tokens: batched
3.55x and 3.91x the sequential jobs/s on 2 torch threads, 4.55x and 6.37x on 1 (rounds from 2.6 to 6.8; a bare
batched ``generate``, no per-row stops, did no better side by side); every answer equal in every round.
"""

from __future__ import annotations

import math
import statistics
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Console

from heurist.catalog import Catalog
from heurist.errors import ConfigError
from heurist.jobs import TextParams
from heurist.settings import Settings
from workers.bench.models import device_label, load_models
from workers.miner.batches import ModelBatches
from workers.miner.pipelines.backend import Pipeline, PipelineOutput

PROMPTS = (
    "Explain how a lighthouse works.",
    "Write a short poem about rain on a tin roof.",
    "What is the capital of France, and why is it famous?",
    "Give three tips for learning to play the guitar.",
    "Describe a walk through a forest in autumn.",
    "Why is the sky blue?",
    "Tell me a story about a dragon who loves books.",
    "How do bees make honey?",
)
LATER = math.inf  # no deadline: a benchmark job must never stop early
WINDOW_S = 0.2  # the batched side's gather window: every job is submitted well within it


@dataclass(frozen=True)
class BatchingBench:
    model_id: str
    device: str
    jobs: int
    max_tokens: int
    sequential_s: float  # medians over the rounds
    batched_s: float
    rounds: list[tuple[float, float]]  # (sequential_s, batched_s) of each round
    batches: int  # batches the batched side ran per round (1: all jobs in one)
    output_tokens: int  # over all jobs, one side
    mismatched: list[int]  # jobs whose batched answer differs from the sequential one

    @property
    def ratio(self) -> float:
        return self.sequential_s / self.batched_s


def prompts(jobs: int) -> list[str]:
    """``jobs`` distinct prompts."""
    return [PROMPTS[n % len(PROMPTS)] + (f" (answer {n // len(PROMPTS) + 1})" if n >= len(PROMPTS) else "")
            for n in range(jobs)]


def sequential(pipeline: Pipeline, params: Sequence[TextParams]) -> tuple[float, list[PipelineOutput]]:
    started = time.perf_counter()
    outputs = [pipeline.run(p, LATER) for p in params]
    return time.perf_counter() - started, outputs


def batched(batches: ModelBatches, model_id: str, params: Sequence[TextParams]) -> tuple[float, list[PipelineOutput]]:
    """All jobs at once, each from its own thread, as a miner's job threads submit them."""
    outputs: list[Any] = [None] * len(params)
    start = threading.Barrier(len(params) + 1)

    def job(n: int) -> None:
        start.wait()
        try:
            outputs[n] = batches.run(model_id, params[n], LATER)
        except Exception as err:  # reported as that job's mismatch
            outputs[n] = err

    threads = [threading.Thread(target=job, args=(n,), name=f"bench-job-{n}") for n in range(len(params))]
    for thread in threads:
        thread.start()
    started = time.perf_counter()
    start.wait()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started, outputs


def run_batching_bench(settings: Settings, catalog: Catalog, model_id: str, device_kind: str | None, jobs: int,
                       max_tokens: int, repeat: int, console: Console) -> BatchingBench:
    """Load ``model_id`` as a miner does, warm both sides up, then time the jobs sequentially, then batched,
    ``repeat`` times."""
    spec = catalog[model_id]
    if spec.text is None:
        raise ConfigError(f"model {model_id} is not a text model: `heurist bench batching --model` takes an LLM")
    device, pipelines = load_models(settings, catalog, [model_id], device_kind, console)
    pipeline = pipelines[model_id]
    params = [TextParams(prompt=prompt, max_tokens=max_tokens) for prompt in prompts(jobs)]
    batches = ModelBatches(pipelines, max_batch=jobs, window_s=WINDOW_S)
    with console.status(f"warming up {model_id}"):
        sequential(pipeline, params[:1])
        batched(batches, model_id, params[:2])
    warm = batches.batchers[model_id].batches
    rounds: list[tuple[float, float]] = []
    mismatched: set[int] = set()
    for round_ in range(1, repeat + 1):
        with console.status(f"round {round_}/{repeat}: {jobs} jobs one after another"):
            sequential_s, alone = sequential(pipeline, params)
        with console.status(f"round {round_}/{repeat}: {jobs} jobs at once, batched"):
            batched_s, together = batched(batches, model_id, params)
        rounds.append((sequential_s, batched_s))
        mismatched |= {n for n, (a, b) in enumerate(zip(alone, together, strict=True))
                       if not isinstance(b, PipelineOutput) or a.data != b.data}
    batches.close()
    return BatchingBench(model_id=model_id, device=device_label(device), jobs=jobs, max_tokens=max_tokens,
                         sequential_s=statistics.median(r[0] for r in rounds),
                         batched_s=statistics.median(r[1] for r in rounds), rounds=rounds,
                         batches=(batches.batchers[model_id].batches - warm) // repeat,
                         output_tokens=sum(o.output_tokens for o in alone), mismatched=sorted(mismatched))


def as_dict(bench: BatchingBench) -> dict[str, Any]:
    return {"model": bench.model_id, "device": bench.device, "jobs": bench.jobs, "max_tokens": bench.max_tokens,
            "output_tokens": bench.output_tokens, "sequential_s": round(bench.sequential_s, 3),
            "batched_s": round(bench.batched_s, 3),
            "sequential_jobs_per_s": round(bench.jobs / bench.sequential_s, 3),
            "batched_jobs_per_s": round(bench.jobs / bench.batched_s, 3),
            "batched_vs_sequential": round(bench.ratio, 3), "batches": bench.batches, "repeat": len(bench.rounds),
            "round_ratios": [round(seq / bat, 3) for seq, bat in bench.rounds],
            "outputs_equal": not bench.mismatched, "mismatched_jobs": bench.mismatched}
