"""TGE (issue 15, incentivized testnet): 50,000,000 HUE from points, Waifu and Llama pools apart, exactly once.

Hand-computed on both databases: with a 60/40 split the Waifu pool is 30,000,000 HUE and the Llama pool
20,000,000; image points 3 : 1 share the first (22,500,000 and 7,500,000 HUE), text points the second. A miner
whose image job was clawed back has net 0 and gets nothing; a pool whose shares do not divide leaves the floor's
remainder unminted.
"""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, select

from heurist.catalog import JobKind
from heurist.db.engine import session_scope
from heurist.economy.amounts import ONE
from heurist.economy.book import EconomyError
from heurist.economy.config import Rules
from heurist.economy.epochs import proof
from heurist.economy.merkle import MerkleTree, verify
from heurist.economy.service import Economy
from heurist.economy.tables import Account, AccountKind
from heurist.economy.tge import TGE_EPOCH, run_tge
from heurist.identity import Wallet
from heurist.jobs import JobState
from heurist.ledger.tables import EntryKind, Job, Miner, PointsEntry

T0 = 1_900_000_000.0
MILLION = 1_000_000 * ONE


def _points(engine: Engine, miner: str, kind: JobKind, micro: int, key: str, clawback: bool = False,
            at: float = T0) -> None:
    """A credited job of ``kind`` worth ``micro`` micro-points (and, with ``clawback``, its clawback)."""
    with session_scope(engine) as session:
        if session.get(Miner, miner) is None:
            session.add(Miner(address=miner, first_seen=T0, last_seen=T0, models=[], device={}))
            session.flush()
        session.add(Job(id=key, model_id="m", kind=kind, params={}, queue="q", state=JobState.COMPLETED,
                        output_key=key, created_at=T0, deadline_at=T0 + 60, miner_address=miner))
        session.flush()
        session.add(PointsEntry(idempotency_key=f"credit:{key}", miner_address=miner, job_id=key,
                                kind=EntryKind.JOB_CREDIT, amount_micro=micro, created_at=at))
        if clawback:
            session.add(PointsEntry(idempotency_key=f"clawback:{key}", miner_address=miner, job_id=key,
                                    kind=EntryKind.CLAWBACK, amount_micro=-micro, created_at=T0))


def _liquid(engine: Engine, owner: str) -> int:
    with session_scope(engine) as session:
        value = session.scalar(select(Account.balance).where(Account.kind == AccountKind.LIQUID,
                                                             Account.owner == owner))
    return int(value or 0)


def test_tge_converts_each_pool_pro_rata_once(engine: Engine) -> None:
    w1, w2, llama, clawed = (Wallet.create().address for _ in range(4))
    _points(engine, w1, JobKind.IMAGE, 3_000_000, "j1")
    _points(engine, w2, JobKind.IMAGE, 1_000_000, "j2")
    _points(engine, llama, JobKind.TEXT, 2_000_000, "j3")
    _points(engine, clawed, JobKind.IMAGE, 5_000_000, "j4", clawback=True)
    eco = Economy(engine, Rules(epoch_s=3600, waifu_bps=6_000), clock=lambda: T0 + 10)
    result = run_tge(eco)
    assert (result["waifu_pool"], result["llama_pool"]) == (str(30 * MILLION), str(20 * MILLION))
    expected = {w1: 22_500_000 * ONE, w2: 7_500_000 * ONE, llama: 20 * MILLION}  # 30M x 3/4, 30M x 1/4, 20M
    assert {a: _liquid(engine, a) for a in (w1, w2, llama, clawed)} == {**expected, clawed: 0}
    assert result["minted"] == str(50 * MILLION) and result["unminted"] == "0" and eco.minted() == 50 * MILLION
    leaves = [(p["address"], int(p["amount"])) for p in result["payouts"]]
    assert dict(leaves) == expected and result["merkle_root"] == MerkleTree.of(leaves).root
    got = proof(eco, w2, TGE_EPOCH)
    assert got["root"] == result["merkle_root"] and verify(got["root"], w2, int(got["amount"]), got["proof"])
    with pytest.raises(EconomyError, match=r"^tge: .*exactly once"):
        run_tge(eco)
    assert eco.minted() == 50 * MILLION  # the refused second run minted nothing


def test_what_floors_and_empty_pools_leave_is_not_minted(engine: Engine) -> None:
    miners = [Wallet.create().address for _ in range(3)]
    for i, miner in enumerate(miners):
        _points(engine, miner, JobKind.IMAGE, 1_000_000, f"k{i}")  # 3 equal shares of 25,000,000 HUE
    eco = Economy(engine, Rules(epoch_s=3600), clock=lambda: T0 + 10)
    result = run_tge(eco)
    share = 25 * MILLION // 3  # 8,333,333.333333333333333333 HUE, floored to base units
    assert all(_liquid(engine, m) == share for m in miners)
    assert result["llama_paid"] == "0"  # no text points: the whole Llama pool stays unminted
    assert int(result["unminted"]) == 25 * MILLION + (25 * MILLION - 3 * share)  # + the 1 base unit of the floor
    assert eco.minted() == 3 * share


def test_points_the_epochs_pay_for_are_not_converted_and_genesis_closes_at_tge(engine: Engine) -> None:
    """Points credited once the book's first epoch has begun earn epoch emission, so TGE leaves them out (else
    they would be paid twice); after TGE a genesis for a new address is refused: only emission creates HUE."""
    early, late = Wallet.create().address, Wallet.create().address
    _points(engine, early, JobKind.IMAGE, 1_000_000, "e1")  # T0: the testnet, before the economy started
    clock = [T0 + 7200]
    eco = Economy(engine, Rules(epoch_s=3600), clock=lambda: clock[0])  # genesis two epochs later
    assert eco.genesis({Wallet.create().address: ONE})
    _points(engine, late, JobKind.IMAGE, 1_000_000, "l1", at=T0 + 7300)  # in the book's first epoch: emission's
    clock[0] = T0 + 9000
    result = run_tge(eco)
    assert {p["address"] for p in result["payouts"]} == {early}
    assert _liquid(engine, early) == 25 * MILLION and _liquid(engine, late) == 0
    with pytest.raises(EconomyError, match=r"^genesis: TGE has run"):
        eco.genesis({Wallet.create().address: ONE})
