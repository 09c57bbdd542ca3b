"""`heurist bench latency` runs and prints both sides' p50/p99 and their ratios (speed is not asserted here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from heurist.bench.latency import percentile


def test_bench_latency_prints_both_sides_percentiles_and_ratios(rabbit_url: str, postgres_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEURIST_")}
    env |= {"HEURIST_BROKER_URL": rabbit_url, "HEURIST_DATABASE_URL": postgres_url}
    done = subprocess.run([sys.executable, "-m", "heurist.cli.main", "bench", "latency", "--jobs", "4", "--json"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert (result["jobs"], result["broker"], result["pushed_verdicts"]) == (4, "amqp", True)
    assert result["database"].startswith("postgresql")
    assert 0 < result["bare_p50_ms"] <= result["bare_p99_ms"] and 0 < result["job_p50_ms"] <= result["job_p99_ms"]
    assert result["ratio_p50"] == round(result["job_p50_ms"] / result["bare_p50_ms"], 2)
    assert result["ratio_p99"] == round(result["job_p99_ms"] / result["bare_p99_ms"], 2)


def test_percentiles_are_nearest_rank() -> None:
    samples = [float(x) for x in range(1, 101)]
    assert (percentile(samples, 50), percentile(samples, 99), percentile(samples, 100)) == (50.0, 99.0, 100.0)
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0 and percentile([7.0], 99) == 7.0
