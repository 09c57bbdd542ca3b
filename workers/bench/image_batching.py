"""Image jobs batched against the same jobs one after another, side by side in one run (issue 17).

``measure_image_batching`` renders N reference jobs (``workers.bench.models.reference_params``: the catalog's
default size and steps, N seeds and prompts) one at a time through ``run`` and together through ``run_batch``,
alternately after a warm-up of each, and compares every PNG byte for byte: a batched image must be its single
render (the sha256 is signed, an audit replays the job alone). On this 2-core CPU, shared with other test
runs, tiny-sd at 64x64 and 20 steps, batch 4, median of 5: 1 torch thread sequential 4.36 s, batched 2.80 s,
ratio 1.55; 2 threads 5.83 s and 3.96 s, 1.48; identical bytes in every run.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass

from heurist.jobs import ImageParams
from workers.bench.models import reference_params
from workers.miner.pipelines.backend import BatchItem, Pipeline, PipelineOutput

PROMPTS = ("a lighthouse on a rocky coast at dawn", "a red fox in fresh snow", "an old map of a harbour town",
           "a bowl of lemons on a wooden table, soft light")


@dataclass(frozen=True)
class ImageBatching:
    """Median seconds for ``jobs`` images one at a time and in one batch; ratio = sequential / batched."""

    jobs: int
    sequential_s: float
    batched_s: float
    ratio: float  # above 1: batching pays
    identical: bool  # every batched PNG equal to its single render, in every run


def batch_params(pipeline: Pipeline, jobs: int, steps: int | None = None) -> list[ImageParams]:
    """``jobs`` reference jobs of one batch key: distinct prompts and seeds (``steps``: fewer, for tests)."""
    base = reference_params(pipeline.spec)
    if not isinstance(base, ImageParams):
        raise TypeError(f"model {pipeline.spec.id} does not make images")
    update = {} if steps is None else {"steps": steps}
    return [base.model_copy(update={**update, "prompt": PROMPTS[i % len(PROMPTS)], "seed": base.seed + i})
            for i in range(jobs)]


def _png(result: PipelineOutput | BaseException) -> bytes:
    if isinstance(result, BaseException):
        raise result
    return result.data


def measure_image_batching(pipeline: Pipeline, jobs: int = 4, repeat: int = 3,
                           steps: int | None = None) -> ImageBatching:
    """Time ``jobs`` images sequentially and batched, ``repeat`` times each after one warm-up, taking turns."""
    params = batch_params(pipeline, jobs, steps)
    items = [BatchItem(p, math.inf) for p in params]
    sequential: list[float] = []
    batched: list[float] = []
    identical = True
    for round_ in range(repeat + 1):  # round 0 is the warm-up of both
        started = time.perf_counter()
        alone = [pipeline.run(p, math.inf).data for p in params]
        middle = time.perf_counter()
        together = [_png(result) for result in pipeline.run_batch(items)]
        ended = time.perf_counter()
        identical = identical and alone == together
        if round_ > 0:
            sequential.append(middle - started)
            batched.append(ended - middle)
    seq_s, batch_s = statistics.median(sequential), statistics.median(batched)
    return ImageBatching(jobs=jobs, sequential_s=round(seq_s, 4), batched_s=round(batch_s, 4),
                         ratio=round(seq_s / batch_s, 3), identical=identical)
