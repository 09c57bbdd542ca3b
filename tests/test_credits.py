"""API keys and credits in Standard Credit Units (issue 5): hashed keys, pricing, reserve/refund/settle,
atomic overdraw checks, an append-only history that always sums to the balance. Both databases."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from heurist.catalog import load_catalog
from heurist.credits.keys import hash_key
from heurist.credits.ledger import CreditLedger, InsufficientCreditsError
from heurist.credits.pricing import price_units
from heurist.credits.tables import CreditEntry
from heurist.db import migrate
from heurist.db.engine import make_engine, session_scope
from heurist.submission import image_params, text_params

CATALOG = load_catalog()
HEURIST = [sys.executable, "-m", "heurist.cli.main"]


@pytest.fixture
def ledger(db_url: str) -> Iterator[CreditLedger]:
    migrate.upgrade(db_url)
    engine = make_engine(db_url)
    yield CreditLedger(engine)
    engine.dispose()


def assert_consistent(ledger: CreditLedger, key_id: int) -> None:
    assert ledger.balance(key_id) == ledger.entries_total(key_id)


def test_sd15_prices_in_standard_units() -> None:
    sd15 = CATALOG["sd15"]
    assert price_units(sd15, image_params(sd15, "x", width=512, height=512, steps=20)) == 1.0
    assert price_units(sd15, image_params(sd15, "x", width=1024, height=1024, steps=40)) == 8.0


def test_text_is_priced_at_its_worst_case() -> None:
    spec = next(m for m in CATALOG.models.values() if m.text is not None)
    params = text_params(spec, "hello", max_tokens=100)
    assert price_units(spec, params) == pytest.approx((5 + 100) / 1000 * spec.coefficient)


def test_create_and_authenticate_never_store_the_key(ledger: CreditLedger) -> None:
    key_id, plaintext = ledger.create_key("alice", 2.5)
    assert plaintext.startswith("hk_") and len(plaintext) == 35
    key = ledger.authenticate(plaintext)
    assert key is not None and key.id == key_id and key.key_sha256 == hash_key(plaintext)
    assert ledger.authenticate(plaintext[:-1] + ("A" if plaintext[-1] != "A" else "B")) is None
    assert ledger.authenticate("") is None
    with ledger.engine.connect() as conn:
        dumped = [str(row) for table in ("api_keys", "credit_entries")
                  for row in conn.execute(text(f"SELECT * FROM {table}"))]
    assert dumped and not any(plaintext in row for row in dumped)
    assert ledger.balance(key_id) == 2.5
    ledger.set_disabled(key_id, True)
    assert ledger.authenticate(plaintext) is None


def test_overdraw_is_refused_and_charges_nothing(ledger: CreditLedger) -> None:
    key_id, _ = ledger.create_key("bob", 1.0)
    reservation = ledger.reserve(key_id, "job-1", 0.75)
    assert reservation.units == 0.75 and ledger.balance(key_id) == 0.25
    with pytest.raises(InsufficientCreditsError, match=r"0\.250000 units.*costs 1\.000000"):
        ledger.reserve(key_id, "job-2", 1.0)
    assert ledger.balance(key_id) == 0.25
    assert ledger.reserve(key_id, "job-1", 0.75) == reservation  # the same job is charged once
    assert ledger.balance(key_id) == 0.25
    assert_consistent(ledger, key_id)


def test_concurrent_reservations_of_the_last_credits(ledger: CreditLedger) -> None:
    key_id, _ = ledger.create_key("carol", 1.0)
    barrier = threading.Barrier(4)
    outcomes: list[str] = []

    def attempt(n: int) -> None:
        barrier.wait()
        try:
            ledger.reserve(key_id, f"race-{n}", 1.0)
            outcomes.append("won")
        except InsufficientCreditsError:
            outcomes.append("refused")

    threads = [threading.Thread(target=attempt, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(outcomes) == ["refused", "refused", "refused", "won"]
    assert ledger.balance(key_id) == 0.0
    assert_consistent(ledger, key_id)


def test_refund_once(ledger: CreditLedger) -> None:
    key_id, _ = ledger.create_key("dave", 3.0)
    ledger.reserve(key_id, "job-f", 2.0)
    assert ledger.refund("job-f") == 2.0
    assert ledger.refund("job-f") == 0.0
    assert ledger.balance(key_id) == 3.0
    assert_consistent(ledger, key_id)


def test_settle_refunds_the_unused_reservation_once(ledger: CreditLedger) -> None:
    key_id, _ = ledger.create_key("erin", 1.0)
    ledger.reserve(key_id, "job-t", 0.5)
    assert ledger.settle("job-t", 0.125) == 0.375
    assert ledger.settle("job-t", 0.0) == 0.0  # settled once: a second count changes nothing
    assert ledger.balance(key_id) == 0.875
    assert ledger.refund("job-t") == 0.125  # a settled job that then fails gives back the rest
    assert ledger.balance(key_id) == 1.0
    ledger.topup(key_id, 2.0, "more")
    assert ledger.balance(key_id) == 3.0
    ledger.reserve(key_id, "job-full", 0.5)
    assert ledger.settle("job-full", 0.75) == 0.0  # never charged beyond the reservation
    assert ledger.settle("job-full", 0.1) == 0.0  # and settled once, even at full price
    assert ledger.balance(key_id) == 2.5
    assert_consistent(ledger, key_id)


def test_credit_entries_are_append_only(ledger: CreditLedger) -> None:
    key_id, _ = ledger.create_key("frank", 1.0)
    for sql in ("UPDATE credit_entries SET amount_micro = 999999999", "DELETE FROM credit_entries"):
        with pytest.raises(DBAPIError, match="append-only"), ledger.engine.begin() as conn:
            conn.execute(text(sql))
    with session_scope(ledger.engine) as session:
        assert len(session.scalars(select(CreditEntry)).all()) == 1
    assert_consistent(ledger, key_id)


def heurist(db: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HEURIST_DATABASE_URL": db}
    return subprocess.run([*HEURIST, *args], capture_output=True, text=True, timeout=60, env=env)


def test_cli_create_list_topup(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'keys.sqlite'}"
    created = heurist(db, "keys", "create", "app-1", "--units", "2", "--json")
    assert created.returncode == 0, created.stderr
    assert "shown once" in created.stderr
    made = json.loads(created.stdout.strip().splitlines()[-1])
    assert made["key"].startswith("hk_") and made["balance"] == 2.0
    topped = heurist(db, "keys", "topup", str(made["id"]), "3", "--note", "invoice 7")
    assert topped.returncode == 0 and "5.000000" in topped.stdout, topped.stderr
    listed = heurist(db, "keys", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert made["key"] not in listed.stdout
    [row] = json.loads(listed.stdout.strip().splitlines()[-1])
    assert row["id"] == made["id"] and row["balance"] == 5.0 and made["key"].startswith(row["prefix"])
    missing = heurist(db, "keys", "topup", "999", "1")
    assert missing.returncode == 2 and "no API key 999" in missing.stderr and "Traceback" not in missing.stderr


def test_rate_limit_is_shared_by_every_gateway_process(ledger: CreditLedger) -> None:
    """Two limiters on one database are two gateway processes: together they allow the rate, not twice it."""
    from heurist.gateway.ratelimit import RateLimiter

    now = [1_000.0]
    one, two = (RateLimiter(ledger.engine, 3, clock=lambda: now[0]) for _ in range(2))
    key_id, _ = ledger.create_key("app")
    other, _ = ledger.create_key("other")
    assert [one.take(key_id), two.take(key_id), one.take(key_id)] == [0.0, 0.0, 0.0]
    assert two.take(key_id) == pytest.approx(20.0)  # 3 a minute: the next token in 20 s
    assert one.take(other) == 0.0  # buckets are per key
    now[0] += 20.0
    assert two.take(key_id) == 0.0 and one.take(key_id) == pytest.approx(20.0)
    now[0] += 3600.0
    assert [one.take(key_id) for _ in range(4)][-2:] == [0.0, pytest.approx(20.0)]  # refilled to 3, no more


def test_racing_processes_cannot_both_take_the_last_tokens(ledger: CreditLedger) -> None:
    from heurist.gateway.ratelimit import RateLimiter

    key_id, _ = ledger.create_key("busy")
    limiters = [RateLimiter(ledger.engine, 5, clock=lambda: 5_000.0) for _ in range(4)]
    limiters[0].take(key_id)  # the bucket exists: now every thread races on the one row
    allowed: list[bool] = []
    barrier = threading.Barrier(8)

    def hammer(limiter: RateLimiter) -> None:
        barrier.wait()
        allowed.extend(limiter.take(key_id) == 0.0 for _ in range(3))

    threads = [threading.Thread(target=hammer, args=(limiters[i % 4],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(allowed) == 4 and len(allowed) == 24  # 5 in the bucket, 1 taken before the race
