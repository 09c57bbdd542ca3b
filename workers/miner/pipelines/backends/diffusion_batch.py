"""Image jobs in one diffusers call, each image byte-identical to its render alone (issue 17).

An output's sha256 is signed and an audit replays the job alone, so a batched image must equal its single
render. On this 2-core CPU (torch 2.13, tiny-sd 64x64, 20 steps) a plain batched call did not: 2 of 4 PNGs
differed by 1 in a pixel value. Two ops depend on the batch size, and both are made per job here:

- Matrix products on 2-D inputs (the UNet's timestep embedding and each resnet's projection of it, SDXL's
  pooled text and size embeddings): a GEMM of 8 rows rounds differently from one of 2. ``per_job_linears``
  runs each such product on one job's rows at a time (2 with guidance, 1 without), the shape it has alone.
  Linears on 3-D inputs (attention, feed-forward: 64+ rows a job) and the convolutions of batches of 2 or more
  gave bit-equal rows, and stay batched: they are the work batching saves.
- The VAE decoder runs 1 image alone, and oneDNN convolves a batch of 1 differently from a batch of 2 or more:
  ``vae.enable_slicing()`` decodes the images one at a time, as alone (a single job is unchanged).

With both, batches of 2, 3 and 4 gave the single renders' bytes, with and without guidance or a negative prompt
(tests/test_image_batching.py checks it on the machine running the tests). 4 jobs in one batch ran 1.5x as fast
as one after another (sequential / batched 1.23 to 2.15 over six runs on the shared machine; 1.55 with 1 torch
thread and 1.48 with 2 in the last two: ``workers.bench.image_batching``).

Deadlines: diffusers cannot drop a row mid-call, so the step callback marks each job late the first step end
its own deadline has passed (as ``run`` would have stopped it there) and stops the call only when every job is
late; the jobs still in time get their images, the late ones ``DeadlineExceeded``. A job with an early deadline
never cuts its batch mates short, nor waits for them: the step that marks it late hands it its
``DeadlineExceeded`` at once (``BatchItem.on_fail``), so its thread reports the failure and is acked by its own
time limits, not its batch mates' (its hard limit, which the watchdog enforces, may come before theirs end).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Sequence
from functools import partial
from typing import Any

import torch

from heurist.jobs import ImageParams, TextParams
from workers.miner.pipelines.backend import DeadlineExceeded


class JobRows:
    """How many jobs the model call in progress holds: 0 outside a batch (every product runs as given)."""

    def __init__(self) -> None:
        self.jobs = 0


def _per_job_forward(forward: Any, rows: JobRows, x: torch.Tensor) -> torch.Tensor:
    jobs = rows.jobs
    if jobs > 1 and x.dim() == 2 and x.shape[0] % jobs == 0:
        return torch.cat([forward(chunk) for chunk in x.split(x.shape[0] // jobs)])
    return forward(x)


def per_job_linears(models: Sequence[torch.nn.Module], rows: JobRows) -> int:
    """Make every ``nn.Linear`` in ``models`` run a 2-D input one job's rows at a time while ``rows.jobs`` > 1
    (the module tree and weights are untouched: only the instance's ``forward``). Returns how many."""
    count = 0
    for model in models:
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.forward = partial(_per_job_forward, module.forward, rows)  # type: ignore[method-assign]
                count += 1
    return count


def image_batch_key(params: ImageParams | TextParams) -> Hashable:
    """Jobs one diffusers call can take: same size, steps and guidance; with or without a negative prompt (SDXL
    zeroes the negative embedding when there is none, which a list of prompts cannot mix)."""
    if not isinstance(params, ImageParams):
        return ("not an image job",)  # refused per job by run_batch
    return (params.width, params.height, params.steps, params.guidance, bool(params.negative_prompt))


class BatchDeadlines:
    """The step callback of a batched call: marks jobs late one by one (handing each its failure through
    ``on_fail[i]`` at once), stops the call once all of them are."""

    def __init__(self, deadlines: Sequence[float], steps: int,
                 on_fail: Sequence[Callable[[BaseException], None] | None] = ()) -> None:
        self.deadlines = list(deadlines)
        self.steps = steps
        self.on_fail = list(on_fail) or [None] * len(self.deadlines)
        self.late: dict[int, DeadlineExceeded] = {}

    def check(self, when: str) -> None:
        """Mark the jobs past their deadline now; raise once every job is."""
        now = time.time()
        for i, deadline_at in enumerate(self.deadlines):
            if i not in self.late and now > deadline_at:
                late = self.late[i] = DeadlineExceeded(f"image job stopped {when}: {now - deadline_at:.1f}s past its "
                                                       "time limit (its batch ran on for the jobs still in time)")
                if (fail := self.on_fail[i]) is not None:
                    fail(late)
        if len(self.late) == len(self.deadlines):
            raise DeadlineExceeded(f"every job of the batch passed its time limit {when}")

    def on_step_end(self, pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        self.check(f"after step {step + 1} of {self.steps}")
        return kwargs
