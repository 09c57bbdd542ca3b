"""Waifu points (image jobs) and Llama points (text jobs) kept apart, on SQLite and PostgreSQL and a real S3
store: direct credits, an escrow release split by the held balance it moved, clawbacks, epoch windows, and
``heurist points`` showing both pools."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from sqlalchemy import Engine

from heurist.catalog import Catalog, JobKind
from heurist.catalog.attestation import WeightPins
from heurist.db.engine import make_engine, session_scope
from heurist.db.migrate import upgrade
from heurist.identity import Wallet
from heurist.jobs import JobState
from heurist.ledger.audit_service import AuditLedger
from heurist.ledger.pools import split_release
from heurist.ledger.reader import LedgerReader
from heurist.ledger.service import Ledger
from heurist.ledger.tables import AuditReason, EntryKind, PointsEntry
from heurist.points import MICRO
from heurist.storage.backend import ObjectStore
from tests.fixtures.ledger import Clock, Job, answer, deliver, image_job, register, text_job

CREDIT_PHASE_S = 100.0  # credits at t0; audits, the release and clawbacks from t0 + 100 s


@dataclass(frozen=True)
class Built:
    """The ledger the scenario built, and what each pool must hold (micro-points, from the verdicts)."""

    veteran: str  # credited directly (no escrow)
    newcomer: str  # escrowed, released after 5 passed audits, then credited directly
    t0: float
    expected: dict[str, tuple[int, int]]  # address -> (waifu, llama)
    first_phase: dict[str, int]  # credited micro-points created in [t0, t0 + 100)


def _credit(ledger: Ledger, catalog: Catalog, clock: Clock, store: ObjectStore, wallet: Wallet,
            kind: JobKind, *, steps: int = 40, max_tokens: int = 32) -> tuple[Job, int]:
    """A verified job of ``kind`` and the micro-points it earned."""
    if kind is JobKind.IMAGE:
        job = image_job(ledger, catalog, clock, steps=steps)
        _, verdict = deliver(ledger, store, job, wallet)
    else:
        job = text_job(ledger, catalog, clock, max_tokens=max_tokens)
        _, verdict = deliver(ledger, store, job, wallet, answer(12, 20), input_tokens=12, output_tokens=20)
    assert verdict.accepted and verdict.state is JobState.COMPLETED and verdict.points_micro > 0
    return job, verdict.points_micro


def build(engine: Engine, catalog: Catalog, store: ObjectStore, clock: Clock) -> Built:
    """Veteran: 8 + 4 image points and a text job, credited; the 4-point job fails its audit (clawback).
    Newcomer: two image jobs and two text jobs held in escrow (a 5th passed audit releases them all), then
    a text job credited directly, and a failed audit claws back a released image job."""
    plain = Ledger(engine, catalog, store, clock=clock, pins=WeightPins(None))
    escrow = Ledger(engine, catalog, store, clock=clock, pins=WeightPins(None), escrow_new_miners=True)
    audits = AuditLedger(engine, clock=clock)
    veteran, newcomer = Wallet.create(), Wallet.create()
    assert register(plain, veteran).accepted and register(escrow, newcomer).accepted
    t0 = clock.now

    _, v_big = _credit(plain, catalog, clock, store, veteran, JobKind.IMAGE, steps=40)
    v_small_job, v_small = _credit(plain, catalog, clock, store, veteran, JobKind.IMAGE, steps=20)
    _, v_text = _credit(plain, catalog, clock, store, veteran, JobKind.TEXT)
    assert (v_big, v_small) == (8 * MICRO, 4 * MICRO)  # sd15 1024x1024: 1 point per 5 steps
    held = [_credit(escrow, catalog, clock, store, newcomer, JobKind.IMAGE, steps=s) for s in (40, 10)]
    held += [_credit(escrow, catalog, clock, store, newcomer, JobKind.TEXT, max_tokens=m) for m in (32, 33)]
    assert audits.balance(newcomer.address).escrowed_micro == sum(m for _, m in held)

    clock.now = t0 + CREDIT_PHASE_S
    assert audits.record_audit(v_small_job.id, passed=False, reason=AuditReason.IMAGE_MISMATCH).clawback_micro \
        == -v_small
    released = [audits.record_audit(job.id, passed=True).released_micro for job, _ in held]
    released.append(audits.record_audit(held[0][0].id, passed=True, auditor="second").released_micro)
    assert released == [0, 0, 0, 0, sum(m for _, m in held)]  # the 5th pass releases the whole balance
    _, n_text = _credit(escrow, catalog, clock, store, newcomer, JobKind.TEXT, max_tokens=34)  # no escrow now
    assert audits.record_audit(held[1][0].id, passed=False, reason=AuditReason.IMAGE_MISMATCH,
                               auditor="third").clawback_micro == -held[1][1]  # from the released balance

    waifu_held, llama_held = held[0][1] + held[1][1], held[2][1] + held[3][1]
    return Built(veteran=veteran.address, newcomer=newcomer.address, t0=t0,
                 expected={veteran.address: (v_big, v_text),
                           newcomer.address: (waifu_held - held[1][1], llama_held + n_text)},
                 first_phase={veteran.address: v_big + v_small + v_text})


@pytest.fixture
def built(engine: Engine, catalog: Catalog, object_store: ObjectStore) -> Built:
    return build(engine, catalog, object_store, Clock())


def test_pools_split_credits_releases_and_clawbacks(engine: Engine, built: Built) -> None:
    reader = LedgerReader(engine)
    pools = reader.points_by_pool()
    assert {a: (p.waifu_micro, p.llama_micro) for a, p in pools.items()} == built.expected
    audits = AuditLedger(engine)
    for address, pool in pools.items():
        assert pool.credited_micro == audits.balance(address).credited_micro  # Waifu + Llama = credited
        assert pool.waifu_points == pool.waifu_micro / MICRO
    assert reader.epoch_points(0, 2**40) == {a: w + t for a, (w, t) in built.expected.items()}


def test_a_release_counts_only_what_was_held_when_it_ran(engine: Engine, built: Built) -> None:
    """An escrow entry written after the release (it stays held) moves no pool: the split is by the held
    balance at the release, not in proportion to every escrow entry the miner ever had."""
    reader = LedgerReader(engine)
    text_job_id = next(j.job_id for j in reader.recent_jobs(limit=50)
                       if j.miner == built.newcomer and j.kind is JobKind.TEXT)
    with session_scope(engine) as session:
        session.add(PointsEntry(idempotency_key="late-escrow", miner_address=built.newcomer, job_id=text_job_id,
                                kind=EntryKind.ESCROW, amount_micro=50 * MICRO, created_at=built.t0))
    pools = reader.points_by_pool()
    assert (pools[built.newcomer].waifu_micro, pools[built.newcomer].llama_micro) == built.expected[built.newcomer]


def test_windows_read_an_epochs_points_per_pool(engine: Engine, built: Built) -> None:
    reader = LedgerReader(engine)
    middle, end = built.t0 + CREDIT_PHASE_S / 2, built.t0 + 10 * CREDIT_PHASE_S
    first, second = reader.epoch_points(built.t0, middle), reader.epoch_points(middle, end)
    assert first == built.first_phase  # the newcomer's escrowed credits are not credited: absent
    for address, (waifu, llama) in built.expected.items():
        assert first.get(address, 0) + second[address] == waifu + llama  # the two epochs add up
    early, late = reader.points_by_pool(middle), reader.points_by_pool(end, since=middle)
    assert {a: p.credited_micro for a, p in early.items()} == first
    assert {a: p.credited_micro for a, p in late.items()} == second
    assert late[built.newcomer].waifu_micro > 0 and late[built.newcomer].llama_micro > 0  # the release, split
    assert reader.epoch_points(end, end + 1) == {} and reader.points_by_pool(until=built.t0) == {}


@pytest.mark.parametrize(("amount", "held", "split"), [
    (12, {JobKind.IMAGE: 8, JobKind.TEXT: 4}, (8, 4)),  # the release moved exactly what was held
    (10, {JobKind.IMAGE: 8, JobKind.TEXT: 4}, (6, 4)),  # a racing credit: in proportion, floor to Waifu
    (7, {JobKind.TEXT: 9}, (0, 7)),
    (5, {}, (5, 0)),
])
def test_split_release_always_adds_up(amount: int, held: dict[JobKind, int], split: tuple[int, int]) -> None:
    parts = split_release(amount, held)
    assert (parts[JobKind.IMAGE], parts[JobKind.TEXT]) == split and sum(parts.values()) == amount


# ---------------------------------------------------------------------------------------------------- CLI

@pytest.fixture
def sqlite_engine(sqlite_url: str) -> Iterator[Engine]:
    upgrade(sqlite_url)
    engine = make_engine(sqlite_url)
    yield engine
    engine.dispose()


def heurist(*args: str, database_url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEURIST_")}
    return subprocess.run([sys.executable, "-m", "heurist.cli.main", *args], capture_output=True, text=True,
                          timeout=120, env={**env, "COLUMNS": "200", "HEURIST_DATABASE_URL": database_url})


def test_heurist_points_shows_both_pools(sqlite_url: str, sqlite_engine: Engine, catalog: Catalog,
                                         object_store: ObjectStore) -> None:
    built = build(sqlite_engine, catalog, object_store, Clock())
    done = heurist("points", "--json", database_url=sqlite_url)
    assert done.returncode == 0, done.stderr
    rows = {r["miner"]: r for r in json.loads(done.stdout)}
    assert set(rows) == set(built.expected)
    for address, (waifu, llama) in built.expected.items():
        row = rows[address]
        assert set(row) == {"miner", "jobs", "points", "waifu_points", "llama_points"}
        assert (row["waifu_points"], row["llama_points"]) == (waifu / MICRO, llama / MICRO)
    assert rows[built.veteran]["jobs"] == 3 and rows[built.newcomer]["jobs"] == 5
    assert rows[built.veteran]["points"] == pytest.approx(rows[built.veteran]["waifu_points"]
                                                          + rows[built.veteran]["llama_points"])
    table = heurist("points", database_url=sqlite_url)
    assert table.returncode == 0, table.stderr
    assert "waifu points" in table.stdout and "llama points" in table.stdout
    assert f"{built.expected[built.veteran][0] / MICRO:.6f}" in table.stdout
