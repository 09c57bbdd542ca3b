"""Miner middleware: cross-cutting behaviour around each job, one class each (no ``if`` in the task).

A middleware sees the pipelines once when they are loaded, the job before it runs and the finished
completion after; the launcher and the runtime call them in order. Later issues add metrics, audit
attestation and privacy here; the test hooks of ``workers.testing`` are middleware too.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from heurist.jobs import Completion, JobMessage
from workers.miner.pipelines.backend import DeadlineExceeded, Pipeline

log = logging.getLogger(__name__)


class Middleware:
    """Hooks around one job (and one at load time); override what you need."""

    def wrap_pipelines(self, pipelines: dict[str, Pipeline]) -> dict[str, Pipeline]:
        """Called once, after the pipelines are loaded and before any job: the pipelines to serve instead
        (keyed alike; the same ones unless the middleware changes what is computed)."""
        return pipelines

    def before_job(self, job: JobMessage) -> None:
        """Called before the pipeline runs; raise to refuse the job."""

    def after_job(self, job: JobMessage, completion: Completion) -> Completion:
        """Called once the output is stored and the completion built, before it is signed; returns the
        completion to sign (the same one, unless the middleware adds to what it claims)."""
        return completion


class DeadlineMiddleware(Middleware):
    """Refuse a job whose deadline has already passed (it sat in the queue too long)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock

    def before_job(self, job: JobMessage) -> None:
        late = self.clock() - job.deadline_at
        if late > 0:
            raise DeadlineExceeded(f"job {job.job_id} is {late:.1f}s past its deadline; not run")


class LoggingMiddleware(Middleware):
    """One log line per job: what ran, how long, what it produced."""

    def after_job(self, job: JobMessage, completion: Completion) -> Completion:
        log.info(
            "job %s model=%s run=%.2fs upload=%.3fs bytes=%d tokens=%d+%d",
            job.job_id, job.model_id, completion.timings.run_s, completion.timings.upload_s,
            completion.output_bytes, completion.input_tokens, completion.output_tokens,
        )
        return completion


def wrap_pipelines(pipelines: dict[str, Pipeline], middleware: Sequence[Middleware]) -> dict[str, Pipeline]:
    """The pipelines after each middleware's load-time hook, in order."""
    for mw in middleware:
        pipelines = mw.wrap_pipelines(pipelines)
    return pipelines


def default_middleware() -> list[Middleware]:
    return [DeadlineMiddleware(), LoggingMiddleware()]
