"""The economy's CLI (issue 15): genesis, a signed stake, balances, and ``heurist nodes`` showing what a staker
compares (stake, bribe now and next epoch, uptime, points of this epoch and the last); errors name the field
and a refused action changes nothing. Every command runs as a real subprocess on both databases."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from heurist.cli.economy import parse_percent
from heurist.db.engine import session_scope
from heurist.economy.amounts import ONE
from heurist.economy.book import EconomyError
from heurist.economy.config import Rules
from heurist.economy.service import Economy
from heurist.economy.views import balances
from heurist.identity import Wallet
from heurist.ledger.tables import EntryKind, Miner, MinerUptime, PointsEntry
from heurist.points import MICRO

HEURIST = [sys.executable, "-m", "heurist.cli.main"]
EPOCH_S, INTERVAL_S = 36_000, 3_600  # 10 uptime slots an epoch; 10 h epochs, so the test never straddles two


def heurist(db: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HEURIST_DATABASE_URL": db, "HEURIST_EPOCH_S": str(EPOCH_S),
           "HEURIST_HEARTBEAT_INTERVAL_S": str(INTERVAL_S)}
    return subprocess.run([*HEURIST, *args], capture_output=True, text=True, timeout=120, env=env)


def last_json(done: subprocess.CompletedProcess[str]) -> Any:
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def refused(done: subprocess.CompletedProcess[str], *phrases: str) -> None:
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    one_line = " ".join(done.stderr.split())
    for phrase in phrases:
        assert phrase in one_line, one_line


def _record_activity(engine: Engine, node: str, epoch: int) -> None:
    """What the ledger would have recorded: 7 of 10 slots and 3 points last epoch, 1 slot and 2.5 points now,
    plus an escrowed (not yet credited) entry that must not count."""
    start = epoch * EPOCH_S
    with session_scope(engine) as session:
        session.add_all([MinerUptime(address=node, epoch=epoch - 1, slots=7, last_slot=0),
                         MinerUptime(address=node, epoch=epoch, slots=1, last_slot=0)])
        session.add_all([
            PointsEntry(idempotency_key="t:last", miner_address=node, kind=EntryKind.ESCROW_RELEASE,
                        amount_micro=3 * MICRO, created_at=start - 10),
            PointsEntry(idempotency_key="t:older", miner_address=node, kind=EntryKind.ESCROW_RELEASE,
                        amount_micro=50 * MICRO, created_at=start - EPOCH_S - 10),
            PointsEntry(idempotency_key="t:now", miner_address=node, kind=EntryKind.ESCROW_RELEASE,
                        amount_micro=5 * MICRO // 2, created_at=start + 1),
            PointsEntry(idempotency_key="t:held", miner_address=node, kind=EntryKind.ESCROW,
                        amount_micro=40 * MICRO, created_at=start + 2),
        ])


def test_genesis_stake_balances_nodes_and_refusals(engine: Engine, migrated_url: str, tmp_path: Path) -> None:
    staker, node = Wallet.create(), Wallet.create()
    staker.save(tmp_path / "staker.key")
    node.save(tmp_path / "node.key")
    with session_scope(engine) as session:
        session.add(Miner(address=node.address, first_seen=0, last_seen=time.time(), models=["sd15"], device={}))
    epoch = int(time.time() // EPOCH_S)
    _record_activity(engine, node.address, epoch)
    db, staker_key = migrated_url, str(tmp_path / "staker.key")

    minted = last_json(heurist(db, "economy", "genesis", staker.address, "20000", "--json"))
    assert minted["minted"] is True and minted["amount"] == str(20_000 * ONE)
    receipt = last_json(heurist(db, "stake", node.address, "12000.5", "--key-file", staker_key, "--json"))
    assert receipt["type"] == "Stake" and receipt["key"] == f"action:{staker.address}:0"
    bribe = last_json(heurist(db, "bribe", "12.5", "--key-file", str(tmp_path / "node.key"), "--json"))
    assert bribe["bps"] == 1250 and bribe["effective_epoch"] == epoch + 1

    held = last_json(heurist(db, "balances", staker.address, "--json"))
    assert held["hue"] == str(79_995 * ONE // 10) and held["hue_hue"] == "7999.5"
    assert held["staked"] == [{"node": node.address, "token": "HUE", "amount": str(120_005 * ONE // 10),
                               "amount_hue": "12000.5"}]
    assert held["nonce"] == 1 and held["locks"] == [] and held["vesting"] == []

    [row] = last_json(heurist(db, "nodes", "--json"))
    assert row["node"] == node.address and row["stake"] == str(120_005 * ONE // 10)
    assert row["delegated_HUE"] == row["stake"] and row["own_HUE"] == "0" and row["stakers"] == 1
    assert row["active"] is True
    assert (row["bribe_bps"], row["next_bribe_bps"]) == (0, 1250), "a bribe takes effect from the next epoch"
    assert row["uptime_last"] == pytest.approx(0.7) and 0 < row["uptime"] <= 1
    assert (row["points_last"], row["points"]) == (3.0, 2.5), "credited kinds only, each in its own epoch"

    before = _snapshot(engine, staker.address)
    refused(heurist(db, "stake", node.address, "1.5x", "--key-file", staker_key), "amount:", "'1.5x'")
    refused(heurist(db, "stake", node.address, "1", "--key-file", staker_key, "--nonce", "0"),
            "nonce: 0 was already used", "sign again with nonce 1")
    assert _snapshot(engine, staker.address) == before, "a refused action changes nothing"


def _snapshot(engine: Engine, address: str) -> dict[str, Any]:
    view = balances(Economy(engine, Rules(epoch_s=EPOCH_S), clock=lambda: 0.0), address)
    return {k: v for k, v in view.items() if k != "now"}


@pytest.mark.parametrize(("text", "bps"), [("25", 2500), ("12.5", 1250), ("0", 0), ("100", 10_000),
                                           ("0.01", 1)])
def test_bribe_percent_to_basis_points(text: str, bps: int) -> None:
    assert parse_percent(text) == bps


@pytest.mark.parametrize(("text", "why"), [("101", "outside 0-100"), ("-1", "outside 0-100"),
                                           ("12.345", "finer than 0.01 %"), ("lots", "not a number")])
def test_bribe_percent_refusals_name_the_field(text: str, why: str) -> None:
    with pytest.raises(EconomyError, match=f"^percent: .*{why}"):
        parse_percent(text)
