"""`heurist bench overhead` runs a real miner and a direct worker side by side and prints its keys (not speed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
@pytest.mark.parametrize("services", ["embedded", "rabbitmq+postgresql"])
def test_bench_overhead_prints_direct_network_and_ratio(services: str, shared_models_dir: Path,
                                                        request: pytest.FixtureRequest) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEURIST_")}
    env |= {"HEURIST_MODELS_DIR": str(shared_models_dir), "HF_HUB_OFFLINE": "1"}
    if services != "embedded":
        env |= {"HEURIST_BROKER_URL": request.getfixturevalue("rabbit_url"),
                "HEURIST_DATABASE_URL": request.getfixturevalue("postgres_url")}
    done = subprocess.run([sys.executable, "-m", "heurist.cli.main", "bench", "overhead", "--json", "--models",
                           "tiny-sd", "--repeat", "1", "--threads", "1"],
                          capture_output=True, text=True, timeout=400, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["broker"] == ("embedded+sqlite" if services == "embedded" else "amqp")
    assert result["database"].startswith("sqlite" if services == "embedded" else "postgresql")
    assert result["repeat"] == 1 and result["torch_threads"] == 1 and result["machine"].endswith("x1 threads")
    tiny = result["models"]["tiny-sd"]
    assert tiny["reference_job"].startswith("64x64, 20 steps")
    assert len(tiny["direct_runs_s"]) == len(tiny["network_runs_s"]) == 1
    assert tiny["direct_s"] > 0 and tiny["network_s"] > 0
    assert tiny["ratio"] == pytest.approx(tiny["direct_s"] / tiny["network_s"], abs=0.002)


def test_bench_overhead_names_an_unknown_model() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEURIST_")}
    done = subprocess.run([sys.executable, "-m", "heurist.cli.main", "bench", "overhead", "--models", "nope"],
                          capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode != 0 and "nope" in done.stdout + done.stderr
