"""Child processes that never outlive their parent: own process group, SIGTERM then SIGKILL, and on
Linux a parent-death signal so even a SIGKILLed parent leaves no orphan."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int, *, takes_ctrl_c: bool = False) -> Callable[[], None]:
    """A pre-exec hook asking the kernel to send ``sig`` to the child when its parent dies.

    ``takes_ctrl_c``: the parent forwards SIGINT to the child, so the child must not inherit it ignored
    (a shell script's background job, and so a CI run, starts with SIGINT ignored; exec keeps that)."""

    # Looked up here, not in the child: a supervisor forks restarts from its thread while others run, and
    # between fork and exec the child must take no lock another thread may have held (dlopen's, here).
    prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None

    def hook() -> None:
        if takes_ctrl_c:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
        if prctl is not None:
            prctl(PR_SET_PDEATHSIG, sig)

    return hook


def spawn(argv: Sequence[str], *, env: Mapping[str, str] | None = None, log_path: Path | None = None,
          cwd: Path | None = None, death_signal: int = signal.SIGTERM) -> subprocess.Popen[bytes]:
    """Start ``argv`` in its own session (Ctrl-C reaches only us; we stop it in order), output to a log.

    ``death_signal`` reaches the child if we die first: SIGTERM lets a Celery worker finish or requeue its
    job; a server whose graceful stop is slow (SeaweedFS, ~15 s) should get SIGKILL.
    Spawn from the main thread: the kernel sends it when the *thread* that forked the child exits.
    """
    log: IO[bytes] | int = subprocess.DEVNULL
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "ab")  # noqa: SIM115 - the child owns it; closed below after fork
    try:
        return subprocess.Popen(list(argv), env=dict(env) if env is not None else None, cwd=cwd,
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, preexec_fn=die_with_parent(death_signal))
    finally:
        if not isinstance(log, int):
            log.close()


def stop(proc: subprocess.Popen[bytes], grace_s: float = 15.0) -> int | None:
    """SIGTERM the child's whole group (Celery does a warm shutdown), SIGKILL it after ``grace_s``."""
    if proc.poll() is not None:
        return proc.returncode
    _signal_group(proc, signal.SIGTERM)
    try:
        return proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        _signal_group(proc, signal.SIGKILL)
        return proc.wait(5)


def stop_all(procs: Sequence[subprocess.Popen[bytes]], grace_s: float = 15.0) -> None:
    """``stop`` for several children at once: all get SIGTERM together, so they shut down in parallel
    (one after another, an embedded network took 10-16 s to stop), then SIGKILL whoever outlives the grace."""
    running = [p for p in procs if p.poll() is None]
    for proc in running:
        _signal_group(proc, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for proc in running:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            proc.wait(5)


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL a running child's whole group, as a crash or power cut would (an exited one is left alone:
    its pid may belong to someone else by now)."""
    if proc.poll() is None:
        _signal_group(proc, signal.SIGKILL)


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def tail(path: Path, lines: int = 20) -> str:
    """The last lines of a log, for error messages that explain why a child died."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
