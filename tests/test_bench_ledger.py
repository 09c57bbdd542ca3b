"""`heurist bench ledger` runs on RabbitMQ and PostgreSQL and prints its rates and ratios (speed is not asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


@pytest.mark.parametrize(("flags", "outputs"), [([], "inline"), (["--uploaded"], "uploaded")])
def test_bench_ledger_prints_the_rates_and_ratios(rabbit_url: str, postgres_url: str, flags: list[str],
                                                  outputs: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEURIST_")}
    env |= {"HEURIST_BROKER_URL": rabbit_url, "HEURIST_DATABASE_URL": postgres_url}
    done = subprocess.run([sys.executable, "-m", "heurist.cli.main", "bench", "ledger", "--json", "--jobs", "30",
                           *flags],
                          capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert (result["jobs"], result["broker"], result["database"], result["pool"]) == (30, "amqp", "postgresql",
                                                                                        "threads")
    assert result["exactly_once"] is True and result["dead_letters"] == 0 and result["outputs"] == outputs
    for rate in ("noop_per_s", "ledger_1_per_s", "ledger_2_per_s"):
        assert result[rate] > 0
    assert result["ratio_1_vs_noop"] == round(result["ledger_1_per_s"] / result["noop_per_s"], 3) or abs(
        result["ratio_1_vs_noop"] - result["ledger_1_per_s"] / result["noop_per_s"]) < 0.01
    assert abs(result["ratio_2_vs_1"] - result["ledger_2_per_s"] / result["ledger_1_per_s"]) < 0.01
