"""A round of work every few seconds on a daemon thread, started and stopped with a Celery worker.

The trusted side has two such loops in each ledger process: the stranded-job sweep (``heurist.ledger.sweep``,
every 30 s) and the outbox relay's drain (``heurist.outbox``, every 5 s). A round that raises (a database or
storage hiccup) is logged and the next one runs on time; a worker bootstep starts the thread with the worker and
stops it on a warm or cold shutdown.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from celery import Celery, bootsteps

log = logging.getLogger(__name__)


class Periodic:
    """Runs ``round()`` every ``interval_s``; ``what`` names it in the log line of a failed round."""

    def __init__(self, round: Callable[[], None], interval_s: float, what: str) -> None:
        self.round, self.interval_s, self.what = round, interval_s, what
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.round()
            except Exception:  # a database or storage hiccup: the next round retries
                log.exception("%s failed; retrying in %gs", self.what, self.interval_s)

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"heurist-{self.what.replace(' ', '-')}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def run_with_worker(app: Celery, periodic: Periodic) -> None:
    """Start ``periodic`` with ``app``'s worker and stop it on shutdown (a bootstep whose ``obj`` it is)."""

    class PeriodicStep(bootsteps.StartStopStep):
        label = periodic.what
        name = f"heurist.periodic.{periodic.what}"

        def create(self, parent: Any) -> Periodic:
            return periodic

    app.steps["worker"].add(PeriodicStep)
