"""`heurist demo --economy` (issue 15): jobs, stakes, a bribe, credits bought with HUE, an epoch closed, and
`heurist proof` on the demo's ledger giving a proof of exactly the demo's root and leaves. A few minutes: slow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from heurist.economy.merkle import MerkleTree, verify


@pytest.mark.slow  # the demo waits for an epoch boundary and for its jobs' epoch to end: 2-4 minutes
def test_demo_economy_ends_with_the_epoch_its_root_and_payouts(tmp_path: Path, shared_models_dir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEURIST_")}
    argv = [sys.executable, "-m", "heurist.cli.main", "demo", "--economy", "--epoch-s", "20", "--json",
            "--image-jobs", "2", "--text-jobs", "1", "--max-tokens", "8", "--data-dir", str(tmp_path / "state"),
            "--models-dir", str(shared_models_dir), "--output", str(tmp_path / "out")]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["completed"] == 3
    leaves = [(p["address"], int(p["amount"])) for p in summary["payouts"]]
    assert summary["merkle_root"] == MerkleTree.of(leaves).root
    miner, staker, app = (summary["economy"][k] for k in ("miner", "staker", "app"))
    paid = dict(leaves)
    assert paid[miner] > paid[staker] > 0 and app not in paid  # a 20 % bribe, shared with the operator's own stake
    assert int(summary["issued"]) > 0 and int(summary["burned"]) > 0  # the app's 10 HUE bought credits: fee burned
    assert sum(paid.values()) > int(summary["issued"])  # the pool is the emission plus the miners' share of fees
    env |= {"HEURIST_DATABASE_URL": f"sqlite:///{tmp_path / 'state' / 'ledger.sqlite'}"}
    shown = subprocess.run([sys.executable, "-m", "heurist.cli.main", "proof", staker, "--epoch",
                            str(summary["epoch"]), "--json"], capture_output=True, text=True, timeout=120, env=env)
    assert shown.returncode == 0, shown.stderr
    got = json.loads(shown.stdout.strip().splitlines()[-1])
    assert set(got) == {"address", "amount", "proof", "root"} and got["root"] == summary["merkle_root"]
    assert int(got["amount"]) == paid[staker] and verify(got["root"], staker, paid[staker], got["proof"])
