"""`heurist bench path` runs both sides in one run and prints their ratio (speed is not asserted here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def test_bench_path_prints_both_rates_and_their_ratio(rabbit_url: str, postgres_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEURIST_")}
    env |= {"HEURIST_BROKER_URL": rabbit_url, "HEURIST_DATABASE_URL": postgres_url}
    done = subprocess.run([sys.executable, "-m", "heurist.cli.main", "bench", "path", "--jobs", "20", "--json"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["jobs"] == 20 and result["broker"] == "amqp" and result["database"].startswith("postgresql")
    assert result["baseline_per_s"] > 0 and result["full_path_per_s"] > 0
    assert result["ratio"] == round(result["full_path_per_s"] / result["baseline_per_s"], 3) or abs(
        result["ratio"] - result["full_path_per_s"] / result["baseline_per_s"]) < 0.01
