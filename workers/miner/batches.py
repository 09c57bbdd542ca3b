"""A miner's concurrent jobs, gathered into batches per model (issue 17); each job's thread keeps its whole path.

The worker takes as many jobs as its largest batch (threads pool, prefetch as many: ``launch.serve``). Each
thread admits, opens, uploads, signs and delivers its own job, and is acked late, exactly as when jobs ran one
at a time; only the model call goes through here. One ``heurist.batching.MicroBatcher`` per model gathers the
jobs waiting with an equal ``pipeline.batch_key``, up to the model's batch size (``HEURIST_MINER_MAX_BATCH``,
default 8, capped by what the pipeline takes, ``Pipeline.max_batch``), for ``HEURIST_MINER_BATCH_WINDOW_MS``
after the first; jobs that queued while a batch ran go together at once. ``pipeline.run_batch`` runs them on
the batcher's thread and each job gets its own output or exception. One batch runs on the device at a time,
whatever its model (one lock): the device ran one job at a time before, it now runs one batch.

Why the gain: a decoding step reads all the weights whatever the rows, so SmolLM2-135M on this 2-core CPU made
8 answers of 64 tokens 3.5-3.9x faster batched than one by one on 2 torch threads, 4.5-6.4x on 1 (medians of
3 rounds of ``heurist bench batching`` on a machine shared with other work).

A text row that stops before its batch mates hands its output over at once (``BatchItem.on_done``): a job cut
at its soft limit still has the time before its deadline to upload, rather than waiting for the longest row.
A private job (issue 16) runs alone, a batch of one: its real prompt never shares a forward pass (nor, through
the padding, the timing) with other clients' jobs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Hashable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, InvalidStateError, wait
from contextlib import suppress
from dataclasses import dataclass
from functools import partial

from heurist.batching import MicroBatcher
from heurist.jobs import ImageParams, TextParams
from workers.miner.pipelines.backend import BatchItem, OnToken, Pipeline, PipelineOutput

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class _Job:
    item: BatchItem
    key: Hashable


class ModelBatches:
    """``run`` from any number of job threads; batches per model, one at a time on the device."""

    def __init__(self, pipelines: Mapping[str, Pipeline], max_batch: int = 1, window_s: float = 0.0) -> None:
        self.pipelines = pipelines
        self._device = threading.Lock()
        self.batchers: dict[str, MicroBatcher[_Job, PipelineOutput]] = {
            model_id: MicroBatcher(partial(self._run_batch, pipeline), max_size=max(1, min(pipeline.max_batch,
                                   max_batch)), window_s=window_s, key=lambda job: job.key, name=f"batch-{model_id}")
            for model_id, pipeline in pipelines.items()}

    @property
    def concurrency(self) -> int:
        """Jobs worth having in flight: the largest batch of any model served."""
        return max((batcher.max_size for batcher in self.batchers.values()), default=1)

    def run(self, model_id: str, params: ImageParams | TextParams, deadline_at: float,
            on_token: OnToken | None = None, alone: bool = False) -> PipelineOutput:
        """What ``pipeline.run`` gives for this job, run in a batch with others (``alone``: in a batch of its own);
        returns as soon as its output is final, raises its own exception."""
        pipeline = self.pipelines[model_id]
        early: Future[PipelineOutput] = Future()

        def done(output: PipelineOutput) -> None:
            with suppress(InvalidStateError):  # handed over twice: the first stands
                early.set_result(output)

        key = object() if alone else pipeline.batch_key(params)  # object(): equal to no other job's key
        batched = self.batchers[model_id].enqueue(_Job(BatchItem(params, deadline_at, on_token, done), key))
        wait([early, batched], return_when=FIRST_COMPLETED)
        return early.result() if early.done() else batched.result()

    def _run_batch(self, pipeline: Pipeline, jobs: list[_Job]) -> list[PipelineOutput | BaseException]:
        with self._device:
            started = time.perf_counter()
            outcomes = pipeline.run_batch([job.item for job in jobs])
        log.info("%s: a batch of %d job(s) ran in %.2f s", pipeline.spec.id, len(jobs), time.perf_counter() - started)
        return outcomes

    def close(self, wait_s: float = 10.0) -> None:
        """Stop batching, once the batch running now (if any) has ended, waiting up to ``wait_s`` for it: a job's
        thread may return before its batch's ``generate`` does, and a process exiting with a thread inside
        torch may abort ("terminate called without an active exception", exit 134)."""
        for batcher in self.batchers.values():
            batcher.close(wait_s)

    def stats(self) -> dict[str, tuple[int, int]]:
        """Per model: (batches run, jobs in them)."""
        return {model_id: (b.batches, b.items) for model_id, b in self.batchers.items()}


__all__ = ["ModelBatches"]
