"""The audit's trusted side on real databases (SQLite and PostgreSQL) and a real S3 store: sampling,
clawbacks (once per job), escrow and its release, bans, the reporting views, append-only history."""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import pytest
from sqlalchemy import Engine, delete, inspect, select, text, update
from sqlalchemy.exc import DBAPIError

from heurist.audit import AuditSampler
from heurist.catalog import Catalog, load_catalog
from heurist.db import migrate
from heurist.db.engine import make_engine, session_scope
from heurist.errors import InvalidJobError
from heurist.identity import Wallet
from heurist.jobs import JobState
from heurist.ledger import tables
from heurist.ledger.audit_service import BAN_THRESHOLD, EPOCH_SECONDS, AuditLedger
from heurist.ledger.service import Ledger, Reason
from heurist.ledger.standing import RECENT_AUDITS, MinerStanding
from heurist.ledger.tables import AuditReason, EntryKind, MinerEventKind
from heurist.points import MICRO
from heurist.storage.backend import ObjectStore
from tests.fixtures.ledger import PNG, Clock, Job, completion, credited_entries, deliver, image_job, register, sign
from tests.fixtures.race import raced

# 0.9 of a day into tomorrow (the quotient ends in .9: rounding would say the next epoch). Not a fixed date:
# lateness is judged by the store's real upload time, so the ledger's fake clock must not lag the real one.
EPOCH0 = int(time.time() // 86_400) + 1
DAY0 = (EPOCH0 + 0.9) * 86_400


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


@pytest.fixture
def clock() -> Clock:
    return Clock(now=DAY0)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    migrate.upgrade(db_url)
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def ledger(engine: Engine, catalog: Catalog, object_store: ObjectStore, clock: Clock) -> Ledger:
    return Ledger(engine, catalog, object_store, clock=clock, escrow_new_miners=True)


@pytest.fixture
def audits(engine: Engine, clock: Clock) -> AuditLedger:
    return AuditLedger(engine, clock=clock)


@pytest.fixture
def miner(ledger: Ledger) -> Wallet:
    wallet = Wallet.create()
    assert register(ledger, wallet).accepted
    return wallet


def completed_job(ledger: Ledger, catalog: Catalog, clock: Clock, store: ObjectStore, wallet: Wallet,
                  *, steps: int = 40) -> Job:
    """A verified sd15 1024x1024 job: 8 points at 40 steps, 1 point per 5 steps."""
    job = image_job(ledger, catalog, clock, steps=steps)
    _, verdict = deliver(ledger, store, job, wallet)
    assert verdict.accepted and verdict.state is JobState.COMPLETED
    return job


def kinds(engine: Engine, job: Job) -> list[tuple[EntryKind, int]]:
    return [(e.kind, e.amount_micro) for e in credited_entries(engine, job.id)]


def miner_entries(engine: Engine, address: str) -> list[tuple[EntryKind, int, str]]:
    with session_scope(engine) as session:
        rows = session.execute(select(tables.PointsEntry.kind, tables.PointsEntry.amount_micro,
                                      tables.PointsEntry.idempotency_key)
                               .where(tables.PointsEntry.miner_address == address)
                               .order_by(tables.PointsEntry.id)).all()
    return [(k, int(a), key) for k, a, key in rows]


def events(engine: Engine, address: str) -> list[MinerEventKind]:
    with session_scope(engine) as session:
        return list(session.scalars(select(tables.MinerEvent.kind).where(tables.MinerEvent.miner_address == address)
                                    .order_by(tables.MinerEvent.id)))


def view(engine: Engine, name: str, address: str, order: str = "miner_address") -> list[dict[str, Any]]:
    """Rows of a view for one miner, numbers as ints (PostgreSQL SUMs are Decimals)."""
    with engine.connect() as conn:
        rows = conn.execute(text(f"SELECT * FROM {name} WHERE miner_address = :m ORDER BY {order}"),
                            {"m": address}).mappings().all()
    return [{k: (int(v) if k != "miner_address" and v is not None else v) for k, v in r.items()} for r in rows]


def points_of(ledger: Ledger, address: str) -> float:
    return {m.address: m.points for m in ledger.reader.miner_points()}[address]


# ---------------------------------------------------------------------------------------------- sampler

JOB_IDS = [f"job-{i:05d}" for i in range(10_000)]
VETERAN = MinerStanding(passed=20)
NEWCOMER = MinerStanding(passed=1)
SUSPECT = MinerStanding(passed=20, failed=1, recent_failed=1)


@pytest.mark.parametrize(("standing", "rate"), [(VETERAN, 0.10), (NEWCOMER, 0.35), (SUSPECT, 0.8),
                                                (MinerStanding(passed=20, odd_metrics=True), 0.8)])
def test_sampler_empirical_rate_matches_the_configured_rate(standing: MinerStanding, rate: float) -> None:
    sampler = AuditSampler(base_rate=0.10, new_miner_rate=0.35, suspicious_rate=0.8, seed=42)
    assert sampler.rate(standing) == rate
    chosen = sum(sampler.should_audit(j, standing) for j in JOB_IDS)
    assert abs(chosen / len(JOB_IDS) - rate) <= 0.015


def test_sampler_defaults_and_determinism() -> None:
    sampler = AuditSampler(seed=7)
    assert (sampler.rate(VETERAN), sampler.rate(NEWCOMER), sampler.rate(SUSPECT)) == (0.10, 0.5, 1.0)
    assert all(sampler.should_audit(j, SUSPECT) for j in JOB_IDS)
    assert sampler.rate(MinerStanding(passed=4)) == 0.5 and sampler.rate(MinerStanding(passed=5)) == 0.10
    same = [AuditSampler(seed=7).should_audit(j, NEWCOMER) for j in JOB_IDS]
    assert same == [sampler.should_audit(j, NEWCOMER) for j in JOB_IDS]
    other = [AuditSampler(seed=8).should_audit(j, NEWCOMER) for j in JOB_IDS]
    assert sum(a != b for a, b in zip(same, other, strict=True)) > 4000  # independent flips differ half the time
    assert all(0.0 <= sampler.draw(j) < 1.0 for j in JOB_IDS[:100])
    with pytest.raises(ValueError, match="base_rate"):
        AuditSampler(base_rate=1.5)
    assert AuditSampler().seed != AuditSampler().seed  # no seed: a secret one each time


# -------------------------------------------------------------------------------------------- clawback


def test_failed_audit_claws_back_once(engine: Engine, catalog: Catalog, object_store: ObjectStore,
                                      clock: Clock, audits: AuditLedger) -> None:
    ledger = Ledger(engine, catalog, object_store, clock=clock)  # no escrow: a plain job_credit
    wallet = Wallet.create()
    register(ledger, wallet)
    job = completed_job(ledger, catalog, clock, object_store, wallet)
    assert audits.reputation(wallet.address) == 0.5
    clock.now += 10
    first = audits.record_audit(job.id, passed=False, reason=AuditReason.IMAGE_MISMATCH, detail="phash 31",
                                metrics={"phash_distance": 31}, auditor="replay-1")
    assert (first.passed, first.duplicate, first.clawback_micro, first.banned) == (False, False, -8 * MICRO, False)
    again = audits.record_audit(job.id, passed=False, reason="image_mismatch", auditor="replay-1")
    assert again.duplicate and again.clawback_micro == -8 * MICRO
    second_auditor = audits.record_audit(job.id, passed=False, reason="image_mismatch", auditor="replay-2")
    assert not second_auditor.duplicate and second_auditor.clawback_micro == 0
    assert kinds(engine, job) == [(EntryKind.JOB_CREDIT, 8 * MICRO), (EntryKind.CLAWBACK, -8 * MICRO)]
    [clawback] = [e for e in credited_entries(engine, job.id) if e.kind is EntryKind.CLAWBACK]
    assert clawback.idempotency_key == f"clawback:{job.id}" and clawback.created_at == clock.now
    assert ledger.reader.job(job.id).points == 0 and points_of(ledger, wallet.address) == 0  # type: ignore[union-attr]
    assert audits.standing(wallet.address) == MinerStanding(passed=0, failed=2, recent_failed=2)
    assert audits.reputation(wallet.address) == pytest.approx(1 / (2 + 1 + 0.9))
    assert events(engine, wallet.address) == [MinerEventKind.SAMPLING_RAISED]  # once, when it became suspect
    assert audits.balance(wallet.address).clawed_back_micro == -8 * MICRO


def test_record_audit_needs_a_completed_job_and_a_reason(ledger: Ledger, catalog: Catalog, clock: Clock,
                                                         object_store: ObjectStore, audits: AuditLedger,
                                                         miner: Wallet) -> None:
    queued = image_job(ledger, catalog, clock)
    with pytest.raises(InvalidJobError, match="no accepted completion"):
        audits.record_audit(queued.id, passed=True)
    job = completed_job(ledger, catalog, clock, object_store, miner)
    with pytest.raises(ValueError, match="reason"):
        audits.record_audit(job.id, passed=False)
    with pytest.raises(ValueError):
        audits.record_audit(job.id, passed=False, reason="not-a-reason")


# ---------------------------------------------------------------------------------------------- escrow


def test_escrow_then_release_after_n_passes(engine: Engine, ledger: Ledger, catalog: Catalog, clock: Clock,
                                            object_store: ObjectStore, audits: AuditLedger,
                                            miner: Wallet) -> None:
    jobs = [completed_job(ledger, catalog, clock, object_store, miner, steps=s) for s in (40, 5, 5, 5, 5)]
    assert [kinds(engine, j) for j in jobs] == [[(EntryKind.ESCROW, 8 * MICRO)]] + [[(EntryKind.ESCROW, MICRO)]] * 4
    assert points_of(ledger, miner.address) == 12.0  # totals count held points
    assert audits.balance(miner.address).escrowed_micro == 12 * MICRO
    for job in jobs[:4]:
        assert audits.record_audit(job.id, passed=True, metrics={"phash_distance": 2}).released_micro == 0
    assert audits.balance(miner.address).credited_micro == 0
    fifth = audits.record_audit(jobs[4].id, passed=True)
    assert fifth.released_micro == 12 * MICRO and fifth.standing.passed == 5
    assert miner_entries(engine, miner.address)[-2:] == [
        (EntryKind.ESCROW_DEBIT, -12 * MICRO, f"escrow_debit:{miner.address}"),
        (EntryKind.ESCROW_RELEASE, 12 * MICRO, f"escrow_release:{miner.address}")]
    balance = audits.balance(miner.address)
    assert (balance.credited_micro, balance.escrowed_micro, balance.total_micro) == (12 * MICRO, 0, 12 * MICRO)
    assert audits.record_audit(jobs[4].id, passed=True).duplicate  # released once
    later = completed_job(ledger, catalog, clock, object_store, miner, steps=10)
    assert kinds(engine, later) == [(EntryKind.JOB_CREDIT, 2 * MICRO)]  # graduated: plain credit
    assert points_of(ledger, miner.address) == 14.0 and audits.reputation(miner.address) > 0.8
    # A released escrow job failing later is clawed back from the available balance.
    assert audits.record_audit(jobs[0].id, passed=False, reason="image_mismatch", auditor="late").clawback_micro \
        == -8 * MICRO
    assert kinds(engine, jobs[0])[-1] == (EntryKind.CLAWBACK, -8 * MICRO)
    assert audits.balance(miner.address).credited_micro == 6 * MICRO


def test_a_failure_while_in_escrow_forfeits_held_points(engine: Engine, ledger: Ledger, catalog: Catalog,
                                                        clock: Clock, object_store: ObjectStore,
                                                        audits: AuditLedger, miner: Wallet) -> None:
    jobs = [completed_job(ledger, catalog, clock, object_store, miner) for _ in range(7)]
    failed = audits.record_audit(jobs[0].id, passed=False, reason=AuditReason.METRICS_IMPLAUSIBLE)
    assert failed.clawback_micro == -8 * MICRO
    assert kinds(engine, jobs[0]) == [(EntryKind.ESCROW, 8 * MICRO), (EntryKind.ESCROW_CLAWBACK, -8 * MICRO)]
    assert sum(audits.record_audit(j.id, passed=True).released_micro for j in jobs[1:6]) == 0  # never released
    balance = audits.balance(miner.address)
    assert (balance.credited_micro, balance.escrowed_micro) == (0, 48 * MICRO)


# ------------------------------------------------------------------------------------------------- bans


def test_ban_after_the_threshold(engine: Engine, ledger: Ledger, catalog: Catalog, clock: Clock,
                                 object_store: ObjectStore, audits: AuditLedger, miner: Wallet) -> None:
    jobs = [completed_job(ledger, catalog, clock, object_store, miner) for _ in range(BAN_THRESHOLD)]
    results = [audits.record_audit(j.id, passed=False, reason="text_mismatch") for j in jobs]
    assert [r.banned for r in results] == [False] * (BAN_THRESHOLD - 1) + [True]
    assert audits.is_banned(miner.address) and audits.reputation(miner.address) == 0.0
    assert events(engine, miner.address) == [MinerEventKind.SAMPLING_RAISED, MinerEventKind.BANNED]
    before = points_of(ledger, miner.address)
    job = image_job(ledger, catalog, clock)
    _, verdict = deliver(ledger, object_store, job, miner)
    assert (verdict.accepted, verdict.reason, verdict.points, verdict.state) == (
        False, Reason.BANNED, 0.0, JobState.QUEUED)  # void work: the job waits for another miner
    assert ledger.reader.points_entries(job.id) == 0 and points_of(ledger, miner.address) == before == 0
    assert ledger.reader.rejections(job.id) == [(Reason.BANNED, miner.address)]
    refused = register(ledger, miner)
    assert (refused.accepted, refused.reason) == (False, Reason.BANNED)
    # An honest miner can still take the freed job.
    honest = Wallet.create()
    register(ledger, honest)
    assert deliver(ledger, object_store, job, honest)[1].accepted
    audits.unban(miner.address, "operator: appeal upheld")
    assert not audits.is_banned(miner.address) and register(ledger, miner).accepted


# ------------------------------------------------------------------------------------------------ views


def test_views_on_both_databases(engine: Engine, ledger: Ledger, catalog: Catalog, clock: Clock,
                                 object_store: ObjectStore, audits: AuditLedger, miner: Wallet) -> None:
    day0 = [completed_job(ledger, catalog, clock, object_store, miner, steps=s) for s in (40, 5, 5, 5, 5)]
    for job in day0[1:]:
        audits.record_audit(job.id, passed=True)
    clock.now += EPOCH_SECONDS
    audits.record_audit(day0[0].id, passed=True)  # fifth pass: the 12-point release falls on day 1
    late = completed_job(ledger, catalog, clock, object_store, miner, steps=10)
    audits.record_audit(late.id, passed=False, reason="image_mismatch")
    assert view(engine, "v_points_per_miner_epoch", miner.address, order="epoch") == [
        {"miner_address": miner.address, "epoch": EPOCH0, "total_micro": 12 * MICRO, "credited_micro": 0,
         "escrowed_micro": 12 * MICRO, "clawed_back_micro": 0, "entries": 5},
        {"miner_address": miner.address, "epoch": EPOCH0 + 1, "total_micro": 0, "credited_micro": 14 * MICRO,
         "escrowed_micro": -12 * MICRO, "clawed_back_micro": -2 * MICRO, "entries": 4},
    ]
    assert view(engine, "v_audit_outcomes", miner.address) == [
        {"miner_address": miner.address, "audits": 6, "passed": 5, "failed": 1, "last_audit_at": int(clock.now)}]
    assert view(engine, "v_flagged_miners", miner.address) == [
        {"miner_address": miner.address, "audits": 6, "failed": 1, "recent_failed": 1, "banned": 0, "flagged": 0}]
    odd, clean = Wallet.create(), Wallet.create()
    for wallet in (odd, clean):
        register(ledger, wallet)
    audits.flag(odd.address, "latency 0.01 s for sdxl on a T4")
    assert view(engine, "v_flagged_miners", odd.address)[0]["flagged"] == 1
    assert audits.standing(odd.address).odd_metrics
    audits.unflag(odd.address, "re-benchmarked")
    assert view(engine, "v_flagged_miners", odd.address) == [] == view(engine, "v_flagged_miners", clean.address)


def test_failures_age_out_of_recent_history(engine: Engine, ledger: Ledger, catalog: Catalog, clock: Clock,
                                            object_store: ObjectStore, audits: AuditLedger,
                                            miner: Wallet) -> None:
    jobs = [completed_job(ledger, catalog, clock, object_store, miner, steps=5) for _ in range(RECENT_AUDITS + 1)]
    audits.record_audit(jobs[0].id, passed=False, reason="output_missing")
    for job in jobs[1:]:
        clock.now += 1
        audits.record_audit(job.id, passed=True)
    assert audits.standing(miner.address) == MinerStanding(passed=RECENT_AUDITS, failed=1, recent_failed=0)
    assert view(engine, "v_flagged_miners", miner.address) == []


# -------------------------------------------------------------------------------------- history, schema


def test_history_is_append_only(engine: Engine, ledger: Ledger, catalog: Catalog, clock: Clock,
                                object_store: ObjectStore, audits: AuditLedger, miner: Wallet) -> None:
    job = completed_job(ledger, catalog, clock, object_store, miner)
    audits.record_audit(job.id, passed=False, reason="weights_tampered")
    for table in (tables.PointsEntry, tables.Audit, tables.MinerEvent):
        column = table.__table__.c.miner_address  # type: ignore[attr-defined]
        for statement in (update(table).values(miner_address=miner.address), delete(table)):
            with pytest.raises(DBAPIError, match="append-only"), session_scope(engine) as session:
                session.execute(statement.where(column == miner.address))
    assert kinds(engine, job) == [(EntryKind.ESCROW, 8 * MICRO), (EntryKind.ESCROW_CLAWBACK, -8 * MICRO)]


def test_view_constants_match_the_migration() -> None:
    frozen = importlib.import_module("migrations.versions.0002_audit")
    assert (frozen.EPOCH_SECONDS, frozen.RECENT_AUDITS) == (EPOCH_SECONDS, RECENT_AUDITS)


def test_downgrade_drops_exactly_what_0002_adds(db_url: str) -> None:
    migrate.upgrade(db_url, "0001")
    engine = make_engine(db_url)
    try:
        before = set(inspect(engine).get_table_names())
        migrate.upgrade(db_url, "0002")
        inspector = inspect(engine)
        assert set(inspector.get_table_names()) - before == {"audits", "miner_events"}
        assert set(inspector.get_view_names()) == {"v_points_per_miner_epoch", "v_audit_outcomes",
                                                   "v_flagged_miners"}
        migrate.downgrade(db_url, "0001")
        inspector = inspect(engine)
        assert set(inspector.get_table_names()) == before and inspector.get_view_names() == []
        assert migrate.current(db_url) == "0001"
    finally:
        engine.dispose()
    migrate.upgrade(db_url)
    assert migrate.current(db_url) == migrate.head()



def test_recorded_gives_this_auditors_earlier_verdict_before_any_replay(
        ledger: Ledger, audits: AuditLedger, catalog: Catalog, clock: Clock, object_store: ObjectStore,
        miner: Wallet) -> None:
    job = completed_job(ledger, catalog, clock, object_store, miner)
    assert audits.recorded(job.id, "auditor-a") is None
    first = audits.record_audit(job.id, False, AuditReason.IMAGE_MISMATCH, "a different image", auditor="auditor-a")
    earlier = audits.recorded(job.id, "auditor-a")
    assert earlier is not None and earlier.duplicate and not earlier.passed
    assert earlier.reason is AuditReason.IMAGE_MISMATCH and first.reason is AuditReason.IMAGE_MISMATCH
    assert earlier.clawback_micro == first.clawback_micro == -8 * MICRO
    assert audits.recorded(job.id, "auditor-b") is None  # another auditor's verdict is its own
    assert audits.balance(miner.address).total_micro == 0  # reading took nothing more


# ------------------------------------------------------------------------------------------- concurrency


def test_failed_audits_judged_at_once_still_ban_at_the_threshold(engine: Engine, ledger: Ledger, catalog: Catalog,
                                                                 clock: Clock, object_store: ObjectStore,
                                                                 audits: AuditLedger) -> None:
    """Each of 4 miners has ``BAN_THRESHOLD`` jobs whose failed audits (12) are all recorded at once: each miner is
    banned, by one event, and raised to the suspicious rate once. Read side by side, the audits missed each other's
    failures (PostgreSQL: 1 of 4 banned; SQLite: 3 sampling_raised events each)."""
    cheats = [Wallet.create() for _ in range(4)]
    jobs = []
    for wallet in cheats:
        register(ledger, wallet)
        jobs += [(wallet, completed_job(ledger, catalog, clock, object_store, wallet)) for _ in range(BAN_THRESHOLD)]
    results = raced(*[partial(audits.record_audit, job.id, False, "image_mismatch", auditor=f"auditor-{i}")
                     for i, (_, job) in enumerate(jobs)])
    assert [events(engine, wallet.address) for wallet in cheats] == \
        [[MinerEventKind.SAMPLING_RAISED, MinerEventKind.BANNED]] * len(cheats)
    for wallet in cheats:
        assert audits.is_banned(wallet.address) and audits.standing(wallet.address).failed == BAN_THRESHOLD
        assert sum(r.banned for r in results if r.miner == wallet.address) == 1  # the last one judged


def test_a_pass_and_a_failure_judged_at_once_never_release_escrow_to_a_failed_miner(
        engine: Engine, ledger: Ledger, catalog: Catalog, clock: Clock, object_store: ObjectStore,
        audits: AuditLedger) -> None:
    """A new miner one pass short of its release: its fifth pass and a failure of another job recorded at once end
    as one of the two orders would, never with the held balance released and the failed job's credit also taken
    from escrow (held went to -8 points: released to a miner with a failed audit)."""
    miners = [Wallet.create() for _ in range(4)]
    calls: list[Callable[[], Any]] = []
    for wallet in miners:
        register(ledger, wallet)
        jobs = [completed_job(ledger, catalog, clock, object_store, wallet) for _ in range(6)]
        for job in jobs[:4]:
            audits.record_audit(job.id, passed=True)
        calls += [partial(audits.record_audit, jobs[4].id, True),
                  partial(audits.record_audit, jobs[5].id, False, "image_mismatch")]
    raced(*calls)
    for wallet in miners:
        balance, entries = audits.balance(wallet.address), miner_entries(engine, wallet.address)
        released = any(kind is EntryKind.ESCROW_RELEASE for kind, _, _ in entries)
        assert balance.escrowed_micro >= 0, entries
        assert balance.total_micro == 5 * 8 * MICRO
        assert (balance.credited_micro, balance.escrowed_micro) == ((40 * MICRO, 0) if released else (0, 40 * MICRO))


@pytest.mark.parametrize("batched", [False, True], ids=["alone", "batched"])
def test_credits_judged_beside_the_release_are_never_left_in_escrow(
        engine: Engine, ledger: Ledger, catalog: Catalog, clock: Clock, object_store: ObjectStore,
        audits: AuditLedger, miner: Wallet, batched: bool) -> None:
    """A new miner's fifth pass releases its escrow once, while 8 of its completions are being verified: each is
    either held when the release moves the held balance or credited as available after it, never held after it
    (before: read as a new miner's, then stored after the release, they were held for good)."""
    if batched:
        ledger.batch(16, 0.02)
    jobs = [completed_job(ledger, catalog, clock, object_store, miner, steps=5) for _ in range(5)]
    for job in jobs[:4]:
        audits.record_audit(job.id, passed=True)
    incoming = [image_job(ledger, catalog, clock, steps=5) for _ in range(8)]
    for job in incoming:
        object_store.put(job.output_key, PNG, "image/png")
    signed = [sign(completion(job, miner, PNG), miner) for job in incoming]
    results = raced(partial(audits.record_audit, jobs[4].id, True),
                    *[partial(ledger.record_completion, s) for s in signed])
    assert results[0].released_micro > 0 and all(verdict.accepted for verdict in results[1:])
    balance = audits.balance(miner.address)
    assert (balance.credited_micro, balance.escrowed_micro) == (13 * MICRO, 0), miner_entries(engine, miner.address)
