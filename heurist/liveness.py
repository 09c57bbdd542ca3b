"""A worker's liveness file: touched while it is connected and consuming, read by container health checks.

Docker and compose restart a container whose process exits (``restart: unless-stopped``), and order start-up by
health (``depends_on: condition: service_healthy``), but nothing could ask a miner whether it works: miners run
without remote control (``celery inspect ping`` needs the pidbox queues a miner may not declare) and serve no
HTTP. So every worker (ledger, auditor, miner) given ``liveness_file`` runs this consumer bootstep: a thread
touches the file every ``TOUCH_INTERVAL_S`` (5 s) from the moment the worker consumes its queues. Celery stops
consumer steps when the broker connection is lost and starts them again once it is back, so the file ages
while a worker is cut off; a thread rather than the worker's timer, so a 30-minute job on the solo pool does
not read as dead.

``python -m heurist.liveness`` exits 0 while the file is at most ``MAX_AGE_S`` (60 s: twelve missed touches)
old, else 1 with the reason: the health check of each worker in docker/compose.yaml.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any

from celery import Celery, bootsteps

log = logging.getLogger(__name__)

TOUCH_INTERVAL_S = 5.0
MAX_AGE_S = 60.0


class LivenessFile(bootsteps.StartStopStep):
    """Touches ``path`` every ``TOUCH_INTERVAL_S`` while the consumer runs (``install_liveness`` sets it)."""

    label = "liveness"
    requires = ("celery.worker.consumer.tasks:Tasks",)  # started once the worker consumes
    path: Path

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, parent: Any) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="heurist-liveness", daemon=True)
        self._thread.start()

    def stop(self, parent: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._thread = None

    shutdown = stop

    def _run(self) -> None:
        while True:
            try:
                self.path.touch()
            except OSError as err:  # a full disk is the health check's business, not a reason to die
                log.warning("liveness file %s not touched: %s", self.path, err)
            if self._stop.wait(TOUCH_INTERVAL_S):
                return


def install_liveness(app: Celery, path: Path | None) -> None:
    """Make ``app``'s workers keep ``path`` fresh while they consume; nothing when ``path`` is None."""
    if path is not None:
        app.steps["consumer"].add(type("LivenessFile", (LivenessFile,), {"path": Path(path)}))


def staleness(path: Path, max_age_s: float = MAX_AGE_S) -> str | None:
    """Why ``path`` says its worker is not alive, or None if it is fresh."""
    try:
        age = time.time() - path.stat().st_mtime
    except OSError as err:
        return f"no liveness file {path} ({err.strerror}): the worker has not consumed yet, or is not running"
    if age > max_age_s:
        return f"liveness file {path} is {age:.0f}s old (> {max_age_s:g}s): the worker is not consuming"
    return None


def main(argv: list[str] | None = None) -> int:
    """The health check: 0 if the worker is alive, else 1 with the reason on stderr."""
    from heurist.settings import Settings

    parser = argparse.ArgumentParser(prog="python -m heurist.liveness", description=__doc__.splitlines()[0])
    parser.add_argument("--file", type=Path, help="the liveness file (default: HEURIST_LIVENESS_FILE)")
    parser.add_argument("--max-age", type=float, default=MAX_AGE_S, help="seconds (default: %(default)s)")
    args = parser.parse_args(argv)
    path = args.file or Settings().liveness_file
    if path is None:
        print("no liveness file: set HEURIST_LIVENESS_FILE (the worker's too) or pass --file", file=sys.stderr)
        return 1
    problem = staleness(path, args.max_age)
    if problem:
        print(problem, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
