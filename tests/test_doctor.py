"""`heurist doctor` on this machine: devices and tiers, model files verified or corrupt, broker reachability."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from workers.miner.doctor import check_broker, tier_of

CHECKED = "tiny-sd,sdxl"  # one model that is here, one that is not (SmolLM's 98 MB would only add hashing time)


def doctor(models_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEURIST_")}
    env.update(HEURIST_MODELS_DIR=str(models_dir), COLUMNS="250")
    return subprocess.run([sys.executable, "-m", "heurist.cli.main", "doctor", "--models", CHECKED, *args],
                          capture_output=True, text=True, timeout=120, env=env)


def test_doctor_reports_devices_tiers_and_a_verified_model(shared_models_dir: Path) -> None:
    done = doctor(shared_models_dir, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["ok"] is True and report["problems"] == []
    device = report["devices"][0]
    assert device["label"] in ("cpu", "gpu0") and device["memory_gb"] > 0
    assert device["tier"] == tier_of(device["plan_gb"])
    assert report["torch"]["version"]
    models = {m["model"]: m for m in report["models"]}
    assert models["tiny-sd"]["files"] == "verified" and models["tiny-sd"]["servable"] is True
    assert models["tiny-sd"]["fits_on"] == [device["label"]]
    assert models["sdxl"]["files"] == "missing" and "huggingface-cli download" in models["sdxl"]["files_detail"]
    assert report["broker"] is None  # none configured: the embedded broker has nothing to reach


def test_doctor_says_corrupt_and_exits_1_for_a_tampered_file(tmp_path: Path, shared_models_dir: Path) -> None:
    models = tmp_path / "models"
    shutil.copytree(shared_models_dir, models)
    weights = next((models / "tiny-sd" / "unet").glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    done = doctor(models)
    assert done.returncode == 1, done.stdout + done.stderr
    row = next(line for line in done.stdout.splitlines() if "tiny-sd" in line and "│" in line)
    assert "corrupt" in row and "unet/" in done.stdout
    assert "problem:" in done.stdout and "no model this miner could serve" in done.stdout
    assert "Traceback" not in done.stderr


def test_doctor_never_builds_a_missing_model(tmp_path: Path) -> None:
    done = doctor(tmp_path / "empty", "--json")
    assert done.returncode == 1
    report = json.loads(done.stdout.strip().splitlines()[-1])
    tiny = next(m for m in report["models"] if m["model"] == "tiny-sd")
    assert tiny["files"] == "missing" and "heurist models build tiny-sd" in tiny["files_detail"]
    assert not (tmp_path / "empty" / "tiny-sd").exists()


def test_broker_check_reaches_rabbitmq_and_times_out_on_a_closed_port(rabbit_url: str) -> None:
    assert check_broker(rabbit_url, "shown").reachable is True
    closed = check_broker("amqp://guest:guest@127.0.0.1:1//", "amqp://***@127.0.0.1:1//", timeout_s=2)
    assert closed.reachable is False and closed.url == "amqp://***@127.0.0.1:1//" and closed.detail
    assert check_broker("embedded+sqlite:////tmp/b.sqlite", "x").reachable is None


@pytest.mark.parametrize(("plan_gb", "tier"), [(6, None), (8, "vram8"), (11.9, "vram8"), (24, "vram24"),
                                               (80, "vram80")])
def test_tier_of(plan_gb: float, tier: str | None) -> None:
    assert tier_of(plan_gb) == tier
