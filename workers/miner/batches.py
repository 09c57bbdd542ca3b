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
A job never waits for the device past its own soft limit (the ``deadline_at`` the pipeline gets) plus
``WITHDRAW_MARGIN_S``. The watchdog counts the wait toward the job's hard limit (deadline + 2 to 30 s), and one
device runs the batches of every model in turn: a job with a 10 s deadline queued behind a 60 s image batch
would pass its hard limit at 12 s and the watchdog would end a healthy miner (``EXIT_HUNG``), which any client
could cause with a few long jobs and one short one. Not started by then, the job is withdrawn (it never runs)
and fails with ``DeadlineExceeded``: a signed "time limit" failure, acked. Once its batch holds the device, the
pipeline stops it at its deadline and hands it over at once (``on_done``, ``on_fail``); a call that never
reaches a step boundary is the watchdog's, as before.
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
from functools import partial

from heurist.batching import MicroBatcher
from heurist.jobs import ImageParams, TextParams
from workers.miner.pipelines.backend import BatchItem, DeadlineExceeded, OnToken, Pipeline, PipelineOutput

log = logging.getLogger(__name__)

WITHDRAW_MARGIN_S = 0.2  # past its soft limit, a job not on the device yet is withdrawn (it would not start then)


class _Job:
    """One job in its model's batcher: ``start``ed when its batch gets the device, or ``withdraw``n by its thread
    before that (it then never runs); the first of the two stands."""

    def __init__(self, item: BatchItem, key: Hashable) -> None:
        self.item, self.key = item, key
        self._lock = threading.Lock()
        self._state = "waiting"

    def _move(self, to: str, unless: str) -> bool:
        with self._lock:
            if self._state == unless:
                return False
            self._state = to
            return True

    def start(self) -> bool:
        return self._move("running", unless="withdrawn")

    def withdraw(self) -> bool:
        return self._move("withdrawn", unless="running")


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
        returns as soon as its output is final, raises its own exception. Raises ``DeadlineExceeded`` if its
        batch has not got the device by ``deadline_at`` + ``WITHDRAW_MARGIN_S`` (the job is then never run)."""
        pipeline = self.pipelines[model_id]
        early: Future[PipelineOutput] = Future()

        def done(output: PipelineOutput) -> None:
            with suppress(InvalidStateError):  # handed over twice: the first stands
                early.set_result(output)

        def failed(err: BaseException) -> None:
            with suppress(InvalidStateError):
                early.set_exception(err)

        key = object() if alone else pipeline.batch_key(params)  # object(): equal to no other job's key
        job = _Job(BatchItem(params, deadline_at, on_token, done, failed), key)
        batcher, queued = self.batchers[model_id], time.time()
        batched = batcher.enqueue(job)
        left = min(threading.TIMEOUT_MAX, max(0.0, deadline_at + WITHDRAW_MARGIN_S - queued))  # inf: no deadline
        ended, _ = wait([early, batched], timeout=left, return_when=FIRST_COMPLETED)
        if not ended and job.withdraw():
            batcher.withdraw(batched)  # off the waiting list; a batch that took it already skips it
            raise DeadlineExceeded(f"job withdrawn at its time limit: it waited {time.time() - queued:.1f} s for "
                                   "the device, busy with other batches, and never started")
        if not ended:  # on the device: the pipeline stops it at its deadline (a hung call is the watchdog's)
            wait([early, batched], return_when=FIRST_COMPLETED)
        return early.result() if early.done() else batched.result()

    def _run_batch(self, pipeline: Pipeline, jobs: list[_Job]) -> list[PipelineOutput | BaseException]:
        with self._device:
            running = [job for job in jobs if job.start()]  # the others' threads have given up: skip them
            started = time.perf_counter()
            outcomes = pipeline.run_batch([job.item for job in running]) if running else []
        if len(outcomes) != len(running):
            raise RuntimeError(f"{pipeline.spec.id}: {len(outcomes)} results for a batch of {len(running)}")
        if running:
            log.info("%s: a batch of %d job(s) ran in %.2f s", pipeline.spec.id, len(running),
                     time.perf_counter() - started)
        results = dict(zip(running, outcomes, strict=True))
        return [results.get(job, DeadlineExceeded("withdrawn before its batch started")) for job in jobs]

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
