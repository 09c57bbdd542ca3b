"""`heurist bench path`, `load` and `epoch` run and print their ratios (speed is not asserted here)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from tests.fixtures.db import DEFAULT_TEST_PG


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


def test_bench_load_reports_rates_latency_and_exactly_once(rabbit_url: str, postgres_url: str) -> None:
    """2 miners and 2 ledger processes on RabbitMQ and PostgreSQL; the counts are read back from the ledger."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEURIST_")}
    env |= {"HEURIST_BROKER_URL": rabbit_url, "HEURIST_DATABASE_URL": postgres_url}
    done = subprocess.run([sys.executable, "-m", "heurist.cli.main", "bench", "load", "--jobs", "150", "--json"],
                          capture_output=True, text=True, timeout=480, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert (result["jobs"], result["miners"], result["ledgers"], result["broker"]) == (150, 2, 2, "amqp")
    assert result["completed"] == result["credited_once"] == result["stored_completions"] == 150
    assert result["not_completed"] == result["credited_twice"] == 0 and result["exactly_once"] is True
    assert 0 < result["p50_s"] <= result["p99_s"] and result["jobs_per_s"] > 0 and result["submit_per_s"] > 0


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_bench_epoch_reports_each_size_and_the_growth_ratio(backend: str) -> None:
    """Two sizes, each a fresh database (PostgreSQL: created through the test role, dropped after)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEURIST_")}
    args = [sys.executable, "-m", "heurist.cli.main", "bench", "epoch", "--json", "--sizes", "200,2000"]
    if backend == "postgresql":
        args += ["--database-url", os.environ.get("HEURIST_TEST_PG") or DEFAULT_TEST_PG]
    done = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["database"] == backend
    assert [size["positions"] for size in result["sizes"]] == [200, 2000]
    assert result["ratio_100k_10k"] is None and result["ratio_of"] == "2000/200"
    assert result["ratio"] == round(result["sizes"][1]["seconds"] / result["sizes"][0]["seconds"], 2)
    for size in result["sizes"]:
        assert size["seconds"] > 0
        assert size["payouts"] == size["positions"] + 100  # every staker and every node's operator is paid
        assert re.fullmatch(r"0x[0-9a-f]{64}", size["merkle_root"])
    assert result["sizes"][0]["merkle_root"] != result["sizes"][1]["merkle_root"]
