"""The README's worked example of an epoch's rewards ("Token economy"), digit for digit, on both databases.

Nodes A (4 points, 120/120 slots, 40,000 staked: operator 10,000 HUE, S 20,000 HUE, T 10,000 esHUE, bribe
25 %), B (4 points, 60 slots, 10,000 HUE) and C (8 points, 120 slots, 9,999 HUE: inactive). The pool is made
exactly 1,000 HUE: 60,000 HUE minted before, so remaining = 950,000,000 - 60,000 = 949,940,000 HUE, and
tau = 949,940,000 x 3,600 / 1,000 s makes remaining x epoch_s // tau = 1,000 HUE.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from heurist.db import migrate
from heurist.db.engine import make_engine, session_scope
from heurist.economy.actions import SetBribe, Stake
from heurist.economy.amounts import ONE, hue
from heurist.economy.book import MINT, liquid, post
from heurist.economy.config import Rules
from heurist.economy.epochs import close_ended, epoch_report
from heurist.economy.service import Economy
from heurist.economy.tables import Token
from heurist.identity import Wallet
from heurist.ledger.tables import EntryKind, Miner, MinerUptime, PointsEntry

EPOCH = 1000  # the epoch rewarded; the stakes and the bribe are made in epoch 999
HOUR = 3600


@pytest.fixture
def economy(db_url: str) -> Iterator[tuple[Economy, list[float]]]:
    migrate.upgrade(db_url)
    engine = make_engine(db_url)
    clock = [(EPOCH - 1) * HOUR + 10.0]
    rules = Rules(epoch_s=HOUR, slots_per_epoch=120, close_grace_s=0, emission_tau_s=949_940_000 * HOUR // 1000)
    yield Economy(engine, rules, clock=lambda: clock[0]), clock
    engine.dispose()


def test_the_readme_worked_example(economy: tuple[Economy, list[float]]) -> None:
    eco, clock = economy
    a, b, c, s, t = (Wallet.create() for _ in range(5))
    with session_scope(eco.engine) as session:
        session.add_all(Miner(address=w.address, first_seen=0, last_seen=0, models=[], device={}) for w in (a, b, c))
    eco.genesis({a.address: hue(10_000), s.address: hue(20_000), b.address: hue(10_000), c.address: hue(10_000)})
    with session_scope(eco.engine) as session:  # T's esHUE (in the network it would be an earlier reward)
        post(session, key="test:eshue", kind="test", actor="", at_ms=eco.now_ms(), epoch=EPOCH - 1,
             legs=[(MINT, -hue(10_000)), (liquid(t.address, Token.ESHUE), hue(10_000))], body={})
    sign = eco.domain.sign
    for wallet, node, token, amount in ((a, a, "HUE", 10_000), (s, a, "HUE", 20_000), (t, a, "esHUE", 10_000),
                                        (b, b, "HUE", 10_000), (c, c, "HUE", 9_999)):
        eco.apply(sign(wallet, Stake(account=wallet.address, node=node.address, token=token,
                                     amount=hue(amount), nonce=0)))
    eco.apply(sign(a, SetBribe(node=a.address, bps=2_500, nonce=1)))
    clock[0] = EPOCH * HOUR + 5
    with session_scope(eco.engine) as session:
        for wallet, points, slots in ((a, 4, 120), (b, 4, 60), (c, 8, 120)):
            session.add(PointsEntry(idempotency_key=f"job:{wallet.address}", miner_address=wallet.address,
                                    job_id=None, kind=EntryKind.JOB_CREDIT, amount_micro=points * 1_000_000,
                                    created_at=clock[0]))
            session.add(MinerUptime(address=wallet.address, epoch=EPOCH, slots=slots, last_slot=0))
    clock[0] = (EPOCH + 1) * HOUR
    assert [r["epoch"] for r in close_ended(eco)] == [EPOCH - 1, EPOCH]
    report = epoch_report(eco, EPOCH)
    assert report is not None
    nodes = {n["node"]: n for n in report["nodes"]}
    assert int(nodes[a.address]["weight"]) == 4_000_000 * 120 * 200_000_000_000  # 9.6e19: isqrt(4e22) = 2e11
    assert int(nodes[b.address]["weight"]) == 4_000_000 * 60 * 100_000_000_000  # 2.4e19
    assert nodes[c.address]["weight"] == "0" and nodes[c.address]["active"] is False
    assert int(nodes[a.address]["reward"]) == 800 * ONE and int(nodes[b.address]["reward"]) == 200 * ONE
    assert report["issued"] == str(1_000 * ONE)
    payouts = {p["address"]: int(p["amount"]) for p in report["payouts"]}
    assert payouts == {
        s.address: 88_888888888888888888,  # 200 x 20,000 / 45,000, floored
        t.address: 66_666666666666666666,  # 200 x 15,000 / 45,000 (esHUE counts 1.5x), floored
        a.address: 644_444444444444444446,  # 600 + 44.444444444444444444 + the 2 base units left over
        b.address: 200 * ONE,
    }
    assert sum(payouts.values()) == 1_000 * ONE
