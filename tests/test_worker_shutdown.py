"""A role's Celery worker stops promptly on SIGTERM and exits non-zero when it stopped on an error."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from celery import bootsteps

from heurist.celery_app import create_app, run_worker
from heurist.errors import HeuristError
from heurist.processes import die_with_parent
from heurist.settings import Settings

IDLE_WORKER = """
import sys
from celery import signals
from heurist.celery_app import create_app, run_worker
from heurist.settings import Settings

signals.worker_ready.connect(lambda **_: print("ready", flush=True), weak=False)
app = create_app(Settings(_env_file=None, broker_url=sys.argv[1]))
worker = app.Worker(hostname="idle@test", queues=["vram8.tiny-sd"], pool="threads", concurrency=1,
                    loglevel="WARNING", quiet=True, without_gossip=True, without_mingle=True)
run_worker(worker, "idle")
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_an_idle_amqp_worker_stops_within_a_second_of_its_signal(rabbit_url: str, tmp_path: Path,
                                                                 sig: signal.Signals) -> None:
    """Celery's handler only sets a flag, and the event loop went back to epoll for up to 10 s (its next
    timer): idle miners took 2-3.4 s to stop. The WakeOnSignal step wakes the loop."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEURIST_")}
    proc = subprocess.Popen([sys.executable, "-c", IDLE_WORKER, rabbit_url], stdout=subprocess.PIPE, text=True,
                            stderr=(tmp_path / "worker.log").open("w"), env=env,
                            preexec_fn=die_with_parent(signal.SIGKILL, takes_ctrl_c=True))
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready", (
            (tmp_path / "worker.log").read_text()[-2000:])
        time.sleep(1.0)  # well into the loop's wait
        sent = time.monotonic()
        proc.send_signal(sig)
        code = proc.wait(30)
        stopped_in = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = (tmp_path / "worker.log").read_text()
    if sig == signal.SIGTERM:
        assert code == 0, log[-2000:]
    else:  # Ctrl-C: interrupted, not "worker exited with code 1"
        assert code == -signal.SIGINT and "HeuristError" not in log, log[-2000:]
    assert stopped_in < 1.0, f"the idle worker took {stopped_in:.2f}s to stop"


class _BrokenStep(bootsteps.StartStopStep):
    """A worker part that fails as it starts (a queue that cannot be declared, say)."""

    def start(self, parent: object) -> None:
        raise RuntimeError("cannot declare the audit queue")


@pytest.mark.filterwarnings("ignore:You.re running the worker with superuser privileges")
def test_a_worker_that_stops_on_an_error_exits_non_zero(tmp_path: Path) -> None:
    """Celery logs "Unrecoverable error" and returns from start(); the role must not exit 0 after it
    (the auditor did, so `heurist demo` reported "auditor exited with code 0" for a crash)."""
    url = f"embedded+sqlite:///{tmp_path / 'broker.sqlite'}"
    app = create_app(Settings(_env_file=None, broker_url=url, data_dir=tmp_path))  # type: ignore[call-arg]
    app.steps["worker"].add(_BrokenStep)
    worker = app.Worker(hostname="broken@test", queues=["audit.tiny-sd"], pool="solo", concurrency=1,
                        loglevel="CRITICAL", quiet=True, without_gossip=True, without_mingle=True)
    with pytest.raises(HeuristError, match="auditor worker exited with code 1"):
        run_worker(worker, "auditor")
