"""Heartbeats and uptime on the ledger (SQLite and PostgreSQL), with the ledger's clock moved by the test.

The live path (a miner process heartbeating over RabbitMQ, shown online then offline) is in test_e2e.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from pydantic import ValidationError
from sqlalchemy import Engine, select

from heurist.catalog import Catalog, load_catalog
from heurist.db.engine import session_factory
from heurist.identity import Wallet
from heurist.jobs import Heartbeat, SignedHeartbeat
from heurist.ledger.audit_service import AuditLedger
from heurist.ledger.roster import Presence, Roster
from heurist.ledger.service import Ledger
from heurist.ledger.tables import MinerUptime, Reason
from heurist.ledger.uptime import EpochClock, UptimeBook
from heurist.routing import miner_tier
from heurist.signing import sign_message
from heurist.storage.backend import ObjectStore
from tests.fixtures.ledger import Clock, register

T0 = 1_000_000.0  # an epoch boundary for epoch_s=100 and a slot boundary for interval 10
EPOCHS = EpochClock(interval_s=10, epoch_s=100)


@pytest.fixture
def clock() -> Clock:
    return Clock(now=T0)


@pytest.fixture
def ledger(engine: Engine, clock: Clock, object_store: ObjectStore) -> Ledger:
    """Heartbeats never touch the object store (the shared fixture's miner registers through this)."""
    return Ledger(engine, load_catalog(), object_store, clock=clock)


@pytest.fixture
def book(engine: Engine, clock: Clock) -> UptimeBook:
    return UptimeBook(engine, EPOCHS, clock=clock)


def beat(wallet: Wallet, sent_at: float, signer: Wallet | None = None) -> SignedHeartbeat:
    heartbeat = Heartbeat(miner=wallet.address, sent_at=sent_at)
    return SignedHeartbeat(heartbeat=heartbeat, signature=sign_message(signer or wallet, heartbeat))


def beat_at(book: UptimeBook, clock: Clock, wallet: Wallet, t: float) -> bool:
    clock.now = t
    return book.record(beat(wallet, t)).accepted


def test_uptime_counts_each_slot_once(book: UptimeBook, clock: Clock, miner: Wallet) -> None:
    for t in (T0, T0 + 10, T0 + 25, T0 + 26, T0 + 29):  # slots 0, 1, 2, 2, 2
        assert beat_at(book, clock, miner, t)
    assert book.uptime(miner.address) == 1.0  # 3 of the 3 slots begun by T0+29
    clock.now = T0 + 59
    assert book.uptime(miner.address) == pytest.approx(3 / 6)
    assert beat_at(book, clock, miner, T0 + 105)  # next epoch
    assert book.uptime(miner.address) == 1.0
    assert book.epoch_uptimes(EPOCHS.epoch(T0)) == {miner.address: pytest.approx(3 / 10)}
    assert book.uptime(miner.address, EPOCHS.epoch(T0)) == pytest.approx(0.3)


@pytest.mark.parametrize("case", ["forged", "stale", "future", "unknown"])
def test_heartbeats_that_prove_nothing_are_refused(book: UptimeBook, clock: Clock, miner: Wallet, case: str) -> None:
    stranger = Wallet.create()
    signed = {
        "forged": beat(miner, T0, signer=stranger),
        "stale": beat(miner, T0 - 61),  # saved up to fill a gap later
        "future": beat(miner, T0 + 61),
        "unknown": beat(stranger, T0),
    }[case]
    verdict = book.record(signed)
    expected = {"forged": Reason.BAD_SIGNATURE, "stale": Reason.LATE, "future": Reason.LATE,
                "unknown": Reason.UNKNOWN_SIGNER}[case]
    assert not verdict.accepted and verdict.reason is expected
    assert book.uptime(miner.address) == 0.0


def test_a_banned_miner_earns_no_uptime(book: UptimeBook, engine: Engine, miner: Wallet) -> None:
    AuditLedger(engine).ban(miner.address, "test")
    assert book.record(beat(miner, T0)).reason is Reason.BANNED


def test_concurrent_heartbeats_in_one_slot_count_once(book: UptimeBook, engine: Engine, miner: Wallet) -> None:
    with ThreadPoolExecutor(8) as pool:
        verdicts = list(pool.map(lambda _: book.record(beat(miner, T0 + 1)), range(16)))
    assert all(v.accepted for v in verdicts)
    with session_factory(engine)() as session:
        assert session.scalars(select(MinerUptime.slots)).all() == [1]


def test_roster_shows_online_offline_and_banned(ledger: Ledger, book: UptimeBook, clock: Clock, engine: Engine,
                                                 miner: Wallet) -> None:
    catalog = ledger.catalog
    quiet, banned = Wallet.create(), Wallet.create()
    for wallet in (quiet, banned):
        assert register(ledger, wallet, models=("tiny-sd",)).accepted
    AuditLedger(engine).ban(banned.address, "test")
    roster = Roster(engine, catalog, book, offline_after_s=30)
    assert beat_at(book, clock, miner, T0 + 40)
    clock.now = T0 + 45
    rows = {r.address: r for r in roster.statuses()}
    assert rows[miner.address].presence is Presence.ONLINE
    assert rows[quiet.address].presence is Presence.OFFLINE  # registered at T0, silent since
    assert rows[banned.address].presence is Presence.BANNED and rows[banned.address].reputation == 0.0
    assert rows[miner.address].tier == miner_tier(catalog, ["sd15", "smollm2-135m"]) == "vram8"
    assert miner_tier(catalog, ["sd15", "mixtral-8x7b"]) == "vram24"
    assert rows[miner.address].uptime == pytest.approx(1 / 5)
    assert rows[miner.address].as_json()["presence"] == "online"
    clock.now = T0 + 71
    assert {r.address: r.presence for r in roster.statuses()}[miner.address] is Presence.OFFLINE


def test_tier_ignores_models_the_catalog_dropped() -> None:
    catalog: Catalog = load_catalog()
    assert miner_tier(catalog, ["no-such-model"]) is None
    assert miner_tier(catalog, ["tiny-sd", "no-such-model"]) == catalog["tiny-sd"].vram.value


@pytest.mark.parametrize("sent_at", [float("nan"), float("inf"), float("-inf")])
def test_a_heartbeat_that_is_not_a_finite_time_is_malformed(miner: Wallet, sent_at: float) -> None:
    """Issue 13, finding 4: ``sent_at=NaN`` compared false with both window bounds and counted 8 slots. Every
    wire message now refuses NaN and infinity, so the ledger's task keeps it as malformed and counts nothing
    (the raw-AMQP attack is in tests/adversary/test_poison.py)."""
    signed = {"heartbeat": {"miner": miner.address, "sent_at": sent_at}, "signature": "0x" + "00" * 65}
    with pytest.raises(ValidationError, match=r"heartbeat\.sent_at\n  Input should be a finite number"):
        SignedHeartbeat.model_validate(signed)
