"""The embedded network (SQLite broker and ledger, SeaweedFS, CPU miner) through `heurist demo`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from heurist.catalog import load_catalog
from heurist.points import job_points
from heurist.processes import die_with_parent
from heurist.submission import image_params


def _run_demo(tmp_path: Path, models_dir: Path, services: dict[str, str]) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEURIST_")} | services
    argv = [sys.executable, "-m", "heurist.cli.main", "demo", "--json", "--image-jobs", "3", "--text-jobs", "1",
            "--max-tokens", "8", "--data-dir", str(tmp_path / "state"), "--models-dir", str(models_dir),
            "--output", str(tmp_path / "out")]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["jobs"] == 4 and summary["completed"] == 4 and summary["failed"] == 0
    assert len(summary["miners"]) == 1 and summary["miners"][0]["jobs"] == 4
    spec = load_catalog()["tiny-sd"]
    image_points = [r["points"] for r in summary["results"] if r["model"] == "tiny-sd"]
    assert image_points == [pytest.approx(job_points(spec, image_params(spec, "x")), abs=1e-6)] * 3
    assert summary["points_total"] == pytest.approx(summary["miners"][0]["points"], abs=1e-6)
    files = sorted(p.suffix for p in (tmp_path / "out").iterdir())
    assert files.count(".png") == 3 and files.count(".json") == 1 and files.count(".txt") == 1
    leftovers = [p for p in psutil.process_iter(["cmdline"]) if str(tmp_path) in " ".join(p.info["cmdline"] or [])]
    assert leftovers == []
    return summary


def test_demo_embedded_sqlite_and_seaweedfs(tmp_path: Path, shared_models_dir: Path) -> None:
    _run_demo(tmp_path, shared_models_dir, {})
    assert (tmp_path / "state" / "broker.sqlite").exists() and (tmp_path / "state" / "ledger.sqlite").exists()
    assert (tmp_path / "state" / "s3").is_dir()


@pytest.mark.slow  # the embedded demo stays in `make test`; this variant takes 40-100 s
def test_demo_on_rabbitmq_postgresql_and_an_external_s3(tmp_path: Path, shared_models_dir: Path, rabbit_url: str,
                                                        postgres_url: str, seaweed) -> None:
    services = {"HEURIST_BROKER_URL": rabbit_url, "HEURIST_DATABASE_URL": postgres_url,
                "HEURIST_S3_ENDPOINT": seaweed.endpoint, "HEURIST_S3_ACCESS_KEY": seaweed.access_key,
                "HEURIST_S3_SECRET_KEY": seaweed.secret_key, "HEURIST_S3_BUCKET": "demo-external"}
    _run_demo(tmp_path, shared_models_dir, services)
    state = tmp_path / "state"
    assert not (state / "broker.sqlite").exists() and not (state / "ledger.sqlite").exists()
    assert not (state / "s3").exists()


@pytest.mark.slow  # 50-90 s: the private path is in `make test` through tests/adversary/test_private_jobs.py
def test_private_demo_on_rabbitmq_postgresql_and_an_external_s3(tmp_path: Path, shared_models_dir: Path,
                                                                rabbit_url: str, postgres_url: str, seaweed) -> None:
    """`heurist demo --private --prompt ... --json` honours the services' settings like the plain demo: one private
    text job and one private image job, decrypted by the client, audited by the auditor the ACC admits."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEURIST_")} | {
        "HEURIST_BROKER_URL": rabbit_url, "HEURIST_DATABASE_URL": postgres_url,
        "HEURIST_S3_ENDPOINT": seaweed.endpoint, "HEURIST_S3_ACCESS_KEY": seaweed.access_key,
        "HEURIST_S3_SECRET_KEY": seaweed.secret_key, "HEURIST_S3_BUCKET": "demo-private"}
    argv = [sys.executable, "-m", "heurist.cli.main", "demo", "--private", "--json", "--prompt",
            "Say hello in French.", "--max-tokens", "8", "--data-dir", str(tmp_path / "state"), "--models-dir",
            str(shared_models_dir), "--output", str(tmp_path / "out")]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert (summary["completed"], summary["failed"]) == (2, 0)
    assert sorted(j["model"] for j in summary["private_jobs"]) == ["smollm2-135m", "tiny-sd"]
    answer = Path(next(j["file"] for j in summary["private_jobs"] if j["model"] == "smollm2-135m")).read_text()
    assert answer.strip() and "private answer, decrypted by the client" in done.stderr
    image = next(j["file"] for j in summary["private_jobs"] if j["model"] == "tiny-sd")
    assert Path(image).read_bytes().startswith(b"\x89PNG")
    assert summary["miners"][0]["audits_passed"] == 2
    assert not (tmp_path / "state" / "ledger.sqlite").exists()  # the ledger was PostgreSQL


def test_ctrl_c_stops_every_process(tmp_path: Path, shared_models_dir: Path) -> None:
    import signal
    import time

    env = {k: v for k, v in os.environ.items() if not k.startswith("HEURIST_")}
    argv = [sys.executable, "-m", "heurist.cli.main", "demo", "--image-jobs", "200", "--text-jobs", "0",
            "--data-dir", str(tmp_path / "state"), "--models-dir", str(shared_models_dir),
            "--output", str(tmp_path / "out")]
    proc = subprocess.Popen(argv, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            preexec_fn=die_with_parent(signal.SIGKILL, takes_ctrl_c=True))  # Ctrl-C as from a terminal
    miner_log = tmp_path / "state" / "logs" / "honest.log"
    give_up = time.monotonic() + 120
    while not miner_log.exists() and time.monotonic() < give_up:
        time.sleep(0.2)
    time.sleep(3)
    children = psutil.Process(proc.pid).children(recursive=True)
    assert len(children) >= 3  # SeaweedFS, ledger, miner
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=90)
    assert proc.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr.decode(errors="replace")
    _, alive = psutil.wait_procs(children, timeout=10)
    assert alive == []


@pytest.mark.slow  # the embedded demo stays in `make test`; this variant takes 40-100 s
def test_demo_with_cheater_flags_the_cheater_only(tmp_path: Path, shared_models_dir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEURIST_")}
    argv = [sys.executable, "-m", "heurist.cli.main", "demo", "--json", "--with-cheater", "--image-jobs", "6",
            "--text-jobs", "1", "--max-tokens", "8", "--data-dir", str(tmp_path / "state"),
            "--models-dir", str(shared_models_dir), "--output", str(tmp_path / "out")]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    miners = {m["address"]: m for m in summary["miners"]}
    cheaters = [m for m in miners.values() if m["audits_failed"]]
    honest = [m for m in miners.values() if not m["audits_failed"]]
    assert len(cheaters) == 1 and len(honest) == 1, miners
    cheater, good = cheaters[0], honest[0]
    assert cheater["flagged"] and cheater["points"] == 0 and cheater["clawed_back"] < 0
    assert not good["flagged"] and good["points"] > 0 and good["audits_passed"] == good["jobs"]
    report = subprocess.run([sys.executable, "-m", "heurist.cli.main", "audit", "report", "--json"],
                            capture_output=True, text=True, timeout=60,
                            env=env | {"HEURIST_DATABASE_URL": f"sqlite:///{tmp_path / 'state' / 'ledger.sqlite'}"})
    assert report.returncode == 0, report.stderr
    rows = {r["address"]: r for r in json.loads(report.stdout.strip().splitlines()[-1])}
    assert rows[cheater["address"]]["flagged"] and not rows[good["address"]]["flagged"]
