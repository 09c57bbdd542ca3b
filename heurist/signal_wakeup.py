"""Wake a Celery worker's event loop when a signal arrives, so SIGTERM or Ctrl-C stops it at once.

On AMQP a worker waits in ``epoll`` for up to 10 s (its next timer). A signal runs Celery's handler, which
only sets a flag, and Python then resumes the same wait (PEP 475): an idle miner took 3-4 s to stop. With
``signal.set_wakeup_fd`` the interpreter writes a byte to a pipe the loop watches, so the loop wakes and
sees the flag. Workers on a polling transport have no event loop; the embedded broker caps their wait
instead (``heurist.broker``).
"""

from __future__ import annotations

import contextlib
import os
import signal
from typing import Any

from celery import bootsteps


class WakeOnSignal(bootsteps.StartStopStep):
    """A worker bootstep: a self-pipe registered with the worker's hub as the interpreter's wakeup fd."""

    requires = ("celery.worker.components:Hub",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._pipe: tuple[int, int] | None = None
        self._previous_fd = -1

    def include_if(self, parent: Any) -> bool:
        return bool(getattr(parent, "use_eventloop", False))

    def start(self, parent: Any) -> None:
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        os.set_blocking(write_fd, False)
        try:
            self._previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        except ValueError:  # not the main thread (a worker run inside a test's thread): nothing to wake
            os.close(read_fd)
            os.close(write_fd)
            return
        self._pipe = (read_fd, write_fd)
        parent.hub.add_reader(read_fd, _drain, read_fd)

    def stop(self, parent: Any) -> None:
        if self._pipe is None:
            return
        read_fd, write_fd = self._pipe
        self._pipe = None
        with contextlib.suppress(ValueError):
            signal.set_wakeup_fd(self._previous_fd)
        with contextlib.suppress(Exception):
            parent.hub.remove_reader(read_fd)
        os.close(read_fd)
        os.close(write_fd)


def _drain(read_fd: int) -> None:
    """Empty the pipe; the wake-up itself was the point."""
    with contextlib.suppress(BlockingIOError):
        while os.read(read_fd, 512):
            pass
