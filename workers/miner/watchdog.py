"""The hard time limit: a model call still running at it is reported, and the miner exits to be restarted.

The soft limit is cooperative: the pipelines stop at their next step boundary (``heurist.time_limits``). A call
that never reaches one (a native kernel or a driver that hangs) is seen only from outside, by this watchdog: one
thread per miner process, armed for each running job (several run at once: ``workers.miner.batches``). At the
first hard limit to pass (a job's deadline plus a grace of 2 to 30 s) it signs a failure report, "hard time
limit: …", sends it to the ledger, which re-sends the job to another miner within its budget
(``heurist.ledger.redispatch.ResendOnReport``), and ends the process with ``EXIT_HUNG``. The other jobs running
then are not reported: unacknowledged, their messages go back to the broker at the exit and run elsewhere if
still in time, or are refused as expired.

Why exit rather than serve on. Celery's hard ``time_limit`` kills a prefork child; miners run the ``threads``
pool (RabbitMQ) or ``solo`` (the embedded broker), where Celery ignores it, and Python cannot kill a thread
stuck in a native call. The stuck thread holds the device (one batch runs at a time) and the model it is
running on, with its GPU memory; running the next batch on that model beside it would share the half-used
pipeline (a diffusers scheduler keeps state per call). Only the end of the process frees them. So "the worker
lives on" means it is restarted: ``EXIT_HUNG`` (75, EX_TEMPFAIL: try again) tells the supervisor (the
embedded network's, systemd's ``Restart=always``, compose's ``restart:``) to start it again, which reloads the
models in seconds (SmolLM2 1.5 s from its conversion cache) and resumes consuming.

The job's message is not run into the same hang again: unacknowledged, it goes back to its queue when the
process exits, but the hard limit falls after the job's deadline, so every miner refuses it there as expired
(``workers.miner.admission``) and the broker dead-letters it. The ledger's re-send is a new message with a fresh
deadline and URL. A job that ends in the instant the watchdog fires is harmless: its upload URL expired at the
deadline, before the hard limit, so it cannot have been credited.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from celery import Celery

from heurist.errors import HardTimeLimitExceeded
from heurist.jobs import JobMessage
from heurist.time_limits import JobClock
from tasks.names import RECORD_FAILURE

if TYPE_CHECKING:
    from workers.miner.runtime import MinerRuntime

log = logging.getLogger(__name__)

EXIT_HUNG = 75  # EX_TEMPFAIL: a model call hung past its hard limit; restart this miner

OnHung = Callable[[JobMessage, HardTimeLimitExceeded], None]


class Watchdog:
    """Watches every running job (one per worker thread); ``watch`` arms it around a job's work."""

    def __init__(self, on_hung: OnHung, exit: Callable[[int], Any] = os._exit,
                 clock: Callable[[], float] = time.time) -> None:
        self.on_hung, self.exit, self.clock = on_hung, exit, clock
        self._cond = threading.Condition()
        self._armed: dict[int, tuple[JobMessage, JobClock]] = {}
        self._count = itertools.count()
        self._thread: threading.Thread | None = None

    @contextmanager
    def watch(self, job: JobMessage, limits: JobClock) -> Iterator[None]:
        """Arm the hard limit ``limits.hard_at`` for ``job`` while the block runs."""
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="heurist-watchdog", daemon=True)
                self._thread.start()
            ticket = next(self._count)
            self._armed[ticket] = (job, limits)
            self._cond.notify()
        try:
            yield
        finally:
            with self._cond:
                self._armed.pop(ticket, None)  # gone already if it fired
                self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._armed:
                    self._cond.wait()
                ticket, (job, limits) = min(self._armed.items(), key=lambda armed: armed[1][1].hard_at)
                left = limits.hard_at - self.clock()
                if left > 0:
                    self._cond.wait(left)  # woken early when a job ends or another is armed
                    continue
                del self._armed[ticket]  # fired once; the others stay armed (the exit ends them all)
            self.fire(job, limits)

    def fire(self, job: JobMessage, limits: JobClock) -> None:
        """Report ``job`` hung, then end the process (``exit``)."""
        now = self.clock()
        err = HardTimeLimitExceeded(
            f"job {job.job_id}: the model call was still running {now - limits.started_at:.1f} s after it started, "
            f"{now - job.deadline_at:.1f} s past the deadline; abandoned, the miner restarts")
        log.critical("%s (exit code %d: a thread stuck in a model call cannot be stopped; its supervisor restarts "
                     "this miner)", err, EXIT_HUNG)
        try:
            self.on_hung(job, err)
        except Exception:  # the report is best effort: the exit must happen whatever the broker does
            log.exception("job %s: the hard time limit report could not be sent", job.job_id)
        finally:
            for handler in logging.getLogger().handlers:
                handler.flush()
            self.exit(EXIT_HUNG)


def install_watchdog(app: Celery, runtime: MinerRuntime, ledger_queue: str) -> Watchdog:
    """Enforce the hard time limit of every job ``runtime`` runs; a hung job is reported through ``app``."""

    def report(job: JobMessage, err: HardTimeLimitExceeded) -> None:
        signed = runtime.failure(job, err)
        app.send_task(RECORD_FAILURE, args=[signed.model_dump(mode="json")], queue=ledger_queue)

    runtime.watchdog = Watchdog(report)
    return runtime.watchdog


__all__ = ["EXIT_HUNG", "OnHung", "Watchdog", "install_watchdog"]
