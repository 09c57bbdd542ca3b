"""`heurist up`: the embedded network and the gateway in one foreground command."""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import requests


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _argv(port: int, tmp_path: Path, models_dir: Path) -> list[str]:
    return [sys.executable, "-m", "heurist.cli.main", "up", "--port", str(port), "--data-dir",
            str(tmp_path / "state"), "--models-dir", str(models_dir), "--units", "50"]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("HEURIST_")}


def _read_banner(proc: subprocess.Popen[str], timeout: float) -> tuple[str, str]:
    """The API key and base URL from the first lines `heurist up` prints."""
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    key = url = None
    give_up = time.monotonic() + timeout
    while key is None or url is None:
        line = lines.get(timeout=max(0.1, give_up - time.monotonic()))
        assert line is not None, f"heurist up exited with {proc.wait()}"
        if m := re.search(r"API key .*: (hk_\S+)", line):
            key = m.group(1)
        if m := re.match(r"gateway: (http://\S+/v1)", line):
            url = m.group(1)
    return key, url


@pytest.mark.slow  # a whole `heurist up` network: 80-140 s (`make test-slow`)
def test_up_serves_the_gateway_until_ctrl_c(tmp_path: Path, shared_models_dir: Path) -> None:
    port = _free_port()
    proc = subprocess.Popen(_argv(port, tmp_path, shared_models_dir), env=_env(), cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE, stderr=(tmp_path / "stderr.log").open("w"))
    try:
        key, url = _read_banner(proc, 240)
        assert url == f"http://127.0.0.1:{port}/v1"
        auth = {"Authorization": f"Bearer {key}"}
        give_up = time.monotonic() + 30
        while True:  # uvicorn serves a moment after the banner
            try:
                models = requests.get(f"{url}/models", headers=auth, timeout=10)
                break
            except requests.ConnectionError:
                assert time.monotonic() < give_up
                time.sleep(0.2)
        assert models.status_code == 200, models.text
        assert {"tiny-sd", "smollm2-135m"} <= {m["id"] for m in models.json()["data"]}
        image = requests.post(f"{url}/images/generations", headers=auth, timeout=120,
                              json={"prompt": "a red fox", "model": "tiny-sd", "width": 64, "height": 64,
                                    "steps": 8})
        assert image.status_code == 200, image.text
        assert image.json()["data"][0]["url"].startswith("http")
        answer = requests.post(f"{url}/search", headers=auth, timeout=240,  # the demo corpus is there at once
                               json={"question": "How are cheating miners caught?", "max_tokens": 24})
        assert answer.status_code == 200, answer.text
        assert answer.json()["references"][0]["title"] == "Audits and cheating"
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 4  # SeaweedFS, ledger, miner, auditor
        proc.send_signal(signal.SIGINT)
        stopping = time.monotonic()
        assert proc.wait(90) == 130, (tmp_path / "stderr.log").read_text()[-3000:]
        print(f"heurist up stopped in {time.monotonic() - stopping:.1f}s")
        assert "interrupted: every process this command started has been stopped" in (
            tmp_path / "stderr.log").read_text()
        stderr = (tmp_path / "stderr.log").read_text()
        assert "Traceback" not in stderr
        _, alive = psutil.wait_procs(children, timeout=10)
        assert alive == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_up_on_a_busy_port_fails_at_once(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        started = time.monotonic()
        done = subprocess.run(_argv(port, tmp_path, tmp_path / "models"), env=_env(), cwd=tmp_path,
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "--port" in done.stderr and str(port) in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "state").exists()  # nothing was started
    assert time.monotonic() - started < 30
