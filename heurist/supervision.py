"""Restart what dies: one restart policy for the embedded network's children and ``heurist miner``'s GPU workers.

Issue 14 found children that died and stayed dead: a SIGKILLed ledger, miner or SeaweedFS left `heurist up`
serving a gateway whose jobs nobody ran or stored. A supervisor now restarts a child that exits without being
asked, with the same argv and environment (``heurist.settings`` ``restart_*``):

- **back-off**: ``restart_backoff_s`` (1 s) before a restart, doubled for every restart still in the window, at
  most ``restart_backoff_max_s`` (30 s): a child that dies with its database waits for it instead of spinning;
- **crash-loop guard**: after ``restart_limit`` (8) restarts within ``restart_window_s`` (600 s, about 2 min
  of back-off in all) the child is reported failed with its log tail and left down;
- **failed at start**: a child that exits within ``restart_settle_s`` (30 s) of the start its owner asked for
  is reported at once, as before supervision: a missing model file or a bad option fails every restart alike.

``Supervisor`` watches named children from one thread (a poll every 0.2 s) for ``heurist.embedded``;
``workers.miner.supervisor`` applies the same ``RestartBook`` in its own loop. Measured here with a 0.5 s
back-off (test_supervision): a SIGKILLed ledger was running again 0.8 s later, SeaweedFS (same ports, same data)
served again after 4.1 s, and the jobs in flight around each crash all completed, credited once.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import Popen

from heurist.errors import HeuristError
from heurist.processes import kill_group, tail
from heurist.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RestartPolicy:
    backoff_s: float = 1.0
    backoff_max_s: float = 30.0
    limit: int = 8
    window_s: float = 600.0
    settle_s: float = 30.0

    @classmethod
    def from_settings(cls, s: Settings) -> RestartPolicy:
        return cls(backoff_s=s.restart_backoff_s, backoff_max_s=s.restart_backoff_max_s, limit=s.restart_limit,
                   window_s=s.restart_window_s, settle_s=s.restart_settle_s)


@dataclass(frozen=True)
class Restart:
    delay_s: float
    recent: int  # restarts within the window, this one included


@dataclass(frozen=True)
class GiveUp:
    reason: str


@dataclass
class RestartBook:
    """One child's restarts: whether the next exit is restarted, and after how long."""

    policy: RestartPolicy
    started_at: float = field(default_factory=time.monotonic)
    restarted: bool = False  # the current run is a restart, not its owner's start
    recent: deque[float] = field(default_factory=deque)
    asked: bool = False  # the last exit asked for a restart (EX_TEMPFAIL): not counted as a crash

    def after_exit(self, now: float, code: int | None = None) -> Restart | GiveUp:
        """``code`` 75 (EX_TEMPFAIL) is a miner that gave up a model call hung past its job's hard limit
        (``workers.miner.watchdog``): it is restarted after the first back-off and counts neither as a failed
        start nor towards the crash-loop limit, or a backlog of nearly expired jobs could leave a GPU down."""
        p = self.policy
        self.asked = code == os.EX_TEMPFAIL
        if self.asked:
            return Restart(p.backoff_s, len(self.recent))
        if not self.restarted and now - self.started_at < p.settle_s:
            return GiveUp(f"it failed within {p.settle_s:g}s of its start (restart_settle_s), which a restart repeats")
        while self.recent and now - self.recent[0] > p.window_s:
            self.recent.popleft()
        if len(self.recent) >= p.limit:
            return GiveUp(f"crash loop: restarted {len(self.recent)} times in {p.window_s:g}s "
                          f"(restart_limit, restart_window_s)")
        return Restart(min(p.backoff_max_s, p.backoff_s * 2 ** len(self.recent)), len(self.recent) + 1)

    def restarting(self, now: float) -> None:
        if not self.asked:
            self.recent.append(now)
        self.restarted, self.started_at = True, now


@dataclass
class Supervised:
    name: str
    launch: Callable[[], Popen[bytes]]
    log_path: Path
    proc: Popen[bytes]
    book: RestartBook
    due: float | None = None  # when the pending restart runs
    failed: str | None = None  # why it is left down


class Supervisor:
    """Named children; one thread restarts those that exit unasked.

    Restarts happen under the lock that ``add``, ``forget``, ``crash`` and ``hold`` take, so stopping never
    races a restart: after ``hold()`` nothing is started again. The thread must outlive every child it
    started (the kernel sends a child's parent-death signal when the *thread* that forked it exits), so its
    owner stops the children between ``hold()`` and ``join()``.
    """

    def __init__(self, policy: RestartPolicy, notify: Callable[[str], None] | None = None,
                 poll_s: float = 0.2) -> None:
        self.policy, self.notify, self.poll_s = policy, notify, poll_s
        self.restarts: Counter[str] = Counter()
        self._children: dict[str, Supervised] = {}
        self._lock = threading.RLock()
        self._closing = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, name: str, launch: Callable[[], Popen[bytes]], log_path: Path,
            proc: Popen[bytes] | None = None) -> Popen[bytes]:
        """Start ``launch()`` (or adopt ``proc``, started by it) as ``name``; ``launch`` also restarts it."""
        with self._lock:
            if self._closing:
                raise HeuristError(f"cannot start {name}: the network is stopping")
            proc = proc or launch()
            self._children[name] = Supervised(name, launch, log_path, proc, RestartBook(self.policy))
            if self._thread is None:
                self._stop.clear()
                self._thread = threading.Thread(target=self._run, name="heurist-supervisor", daemon=True)
                self._thread.start()
            return proc

    def forget(self, name: str) -> Popen[bytes]:
        """Stop supervising ``name`` (KeyError if unknown); its process is left as it is."""
        with self._lock:
            return self._children.pop(name).proc

    def crash(self, name: str) -> int:
        """SIGKILL ``name``'s process group as a crash would, and leave it to the restart; returns its pid."""
        with self._lock:
            proc = self._children[name].proc
            kill_group(proc)
            return proc.pid

    def procs(self) -> dict[str, Popen[bytes]]:
        with self._lock:
            return {name: child.proc for name, child in self._children.items()}

    def check(self) -> None:
        """Raise with the log tail of a child left down (failed at start, or a crash loop)."""
        with self._lock:
            for child in self._children.values():
                if child.failed:
                    raise HeuristError(f"{child.name} {child.failed}:\n{tail(child.log_path)}")

    def hold(self) -> None:
        """No restart from now on (one in progress finishes first): the owner may stop the children."""
        with self._lock:
            self._closing = True

    def join(self) -> None:
        """End the thread, once the children are stopped; ``add`` works again afterwards."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        with self._lock:
            self._thread, self._closing = None, False

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                with self._lock:
                    if not self._closing:
                        for child in list(self._children.values()):
                            self._tick(child, time.monotonic())
            except Exception:  # never let the thread die: its children would get their parent-death signal
                log.exception("supervisor: unexpected error; watching on")

    def _tick(self, child: Supervised, now: float) -> None:
        if child.failed:
            return
        if child.due is None:
            code = child.proc.poll()
            if code is not None:
                self._schedule(child, now, f"{child.name} (pid {child.proc.pid}) exited with code {code}", code)
            return
        if now < child.due:
            return
        child.due = None
        child.book.restarting(now)
        self.restarts[child.name] += 1
        try:
            child.proc = child.launch()
        except Exception as err:  # a run that ended at once: back off again, or give up
            self._schedule(child, now, f"{child.name} could not be restarted ({err})")
            return
        self._say(f"{child.name} restarted (pid {child.proc.pid})")

    def _schedule(self, child: Supervised, now: float, what: str, code: int | None = None) -> None:
        verdict = child.book.after_exit(now, code)
        if isinstance(verdict, GiveUp):
            child.failed = f"{what.removeprefix(child.name + ' ')}; not restarted: {verdict.reason}"
            self._say(f"{what}; not restarted: {verdict.reason}; see {child.log_path}", logging.ERROR)
            return
        child.due = now + verdict.delay_s
        self._say(f"{what}; restarting in {verdict.delay_s:g}s (restart {verdict.recent} in "
                  f"{self.policy.window_s:g}s)")

    def _say(self, line: str, level: int = logging.WARNING) -> None:
        log.log(level, "%s", line)
        if self.notify is not None:
            self.notify(line)
