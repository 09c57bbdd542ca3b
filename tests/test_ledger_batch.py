"""Completions verified in batches (``heurist.ledger.batch``) on SQLite and PostgreSQL and a real S3 store: the same
verdict for each delivery as alone, exactly once under concurrent redelivery, one failing delivery failing only
itself, and a batch whose credit meets another ledger's write (or a job ended meanwhile) redone item by item.
``tests/test_ledger_batched.py`` runs every single-ledger test again on a batching ledger."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import Engine

from heurist.catalog import Catalog
from heurist.catalog.attestation import WeightPins
from heurist.db.engine import is_disconnect, make_engine, session_scope
from heurist.errors import StorageError
from heurist.identity import Wallet
from heurist.jobs import JobState, SignedCompletion
from heurist.ledger.middleware import Accepted, LedgerMiddleware
from heurist.ledger.service import CompletionVerdict, Ledger, Reason
from heurist.ledger.standing import read_signers, read_standing
from heurist.ledger.tables import Audit, AuditOutcome, Miner, MinerEvent, MinerEventKind
from heurist.storage.backend import ObjectInfo, ObjectStore
from tests.fixtures.ledger import PNG, Clock, Job, answer, completion, image_job, register, sign, text_job
from tests.fixtures.s3 import DelegatingStore

WINDOW_S = 0.3  # long enough that deliveries started together share batches


@pytest.fixture
def batched(engine: Engine, catalog: Catalog, object_store: ObjectStore, clock: Clock) -> Iterator[Ledger]:
    ledger = Ledger(engine, catalog, object_store, clock=clock, pins=WeightPins(None))
    ledger.batch(16, WINDOW_S)
    assert ledger.batches is not None
    for batcher in (ledger.batches.loads, ledger.batches.credits, ledger.batches.sends):
        batcher.window_s = WINDOW_S  # the first batch waits too (an idle ledger's would not)
    yield ledger
    ledger.batches.close()


def together(ledger: Ledger, deliveries: list[tuple[SignedCompletion, str | None]]
             ) -> list[CompletionVerdict | BaseException]:
    """Each delivery on its own thread, all started at once; its verdict or its exception."""
    start = threading.Barrier(len(deliveries))

    def one(delivery: tuple[SignedCompletion, str | None]) -> CompletionVerdict | BaseException:
        start.wait(timeout=30)
        try:
            return ledger.record_completion(*delivery)
        except Exception as err:
            return err

    with ThreadPoolExecutor(len(deliveries)) as pool:
        return list(pool.map(one, deliveries))


def outcome(v: CompletionVerdict | BaseException) -> tuple[Any, ...]:
    if isinstance(v, BaseException):
        return (type(v).__name__,)
    return v.accepted, v.duplicate, v.reason, v.points, v.state


def test_deliveries_from_many_threads_share_batches_and_credit_each_job_once(
        batched: Ledger, catalog: Catalog, clock: Clock, object_store: ObjectStore, miner: Wallet) -> None:
    jobs = [image_job(batched, catalog, clock) for _ in range(16)]
    for job in jobs:
        object_store.put(job.output_key, PNG, "image/png")
    signed = [sign(completion(job, miner, PNG), miner) for job in jobs]
    deliveries = [(s, None) for s in signed * 3]
    verdicts = together(batched, deliveries)
    assert all(isinstance(v, CompletionVerdict) and v.accepted and v.points == 8.0 for v in verdicts)
    firsts = Counter(v.job_id for v in verdicts if isinstance(v, CompletionVerdict) and not v.duplicate)
    assert firsts == dict.fromkeys((j.id for j in jobs), 1)
    for job in jobs:
        view = batched.reader.job(job.id)
        assert view is not None and view.state is JobState.COMPLETED
        assert batched.reader.points_entries(job.id) == 1
    assert batched.batches is not None and batched.batches.credits.items > batched.batches.credits.batches


def _scenarios(ledger: Ledger, catalog: Catalog, clock: Clock, store: ObjectStore, miner: Wallet,
               other: Wallet) -> list[tuple[str, SignedCompletion, str | None]]:
    """One delivery per case the checks tell apart, each on fresh jobs."""
    def put(job: Job, data: bytes = PNG) -> Job:
        store.put(job.output_key, data, "image/png")
        return job

    ok, text = put(image_job(ledger, catalog, clock)), text_job(ledger, catalog, clock)
    store.put(text.output_key, answer(30, 5), "application/json")
    twice, closed = put(image_job(ledger, catalog, clock)), put(image_job(ledger, catalog, clock))
    ledger.book.record_failure(closed.id, "the operator ended it")
    late = put(image_job(ledger, catalog, clock, deadline_s=-30.0))
    missing, wrong_bytes = image_job(ledger, catalog, clock), put(image_job(ledger, catalog, clock), PNG + b"x")
    stranger = Wallet.create()
    unknown = Job(str(uuid.uuid4()), ok.spec, ok.params, "outputs/sd15/none.png", clock.now + 60)
    forged = completion(ok, miner, PNG)
    return [
        ("credited", sign(completion(ok, miner, PNG), miner), None),
        ("text", sign(completion(text, miner, answer(30, 5), input_tokens=30, output_tokens=5), miner), None),
        ("twice", sign(completion(twice, miner, PNG), miner), None),
        ("twice", sign(completion(twice, miner, PNG), miner), None),
        ("closed", sign(completion(closed, miner, PNG), miner), None),
        ("late", sign(completion(late, miner, PNG), miner), None),
        ("missing", sign(completion(missing, miner, PNG), miner), None),
        ("sha256", sign(completion(wrong_bytes, miner, PNG), miner), None),
        ("size", sign(completion(put(image_job(ledger, catalog, clock)), miner, PNG, output_bytes=7), miner), None),
        ("model", sign(completion(put(image_job(ledger, catalog, clock)), miner, PNG, model_id="sdxl"), miner), None),
        ("forged", SignedCompletion(completion=forged, signature=sign(forged, other).signature), None),
        ("stranger", sign(completion(put(image_job(ledger, catalog, clock)), stranger, PNG), stranger), None),
        ("unknown job", sign(completion(unknown, miner, PNG), miner), None),
        ("sender", sign(completion(put(image_job(ledger, catalog, clock)), miner, PNG), miner), "miner-0xsomeone"),
    ]


def test_a_batch_gives_each_delivery_the_verdict_it_gets_alone(
        batched: Ledger, catalog: Catalog, clock: Clock, object_store: ObjectStore, miner: Wallet) -> None:
    other = Wallet.create()
    register(batched, other)
    batches, batched.batches = batched.batches, None
    alone = [(name, outcome(batched.record_completion(s, sender)))
             for name, s, sender in _scenarios(batched, catalog, clock, object_store, miner, other)]
    batched.batches = batches
    cases = _scenarios(batched, catalog, clock, object_store, miner, other)
    verdicts = together(batched, [(s, sender) for _, s, sender in cases])
    assert Counter((name, outcome(v)) for (name, _, _), v in zip(cases, verdicts, strict=True)) == Counter(alone)
    reasons = dict(alone)
    assert reasons["credited"] == (True, False, None, 8.0, JobState.COMPLETED)
    assert reasons["late"][:3] == (True, False, Reason.LATE) and reasons["closed"][2] is Reason.JOB_CLOSED
    assert {reasons[n][2] for n in ("missing", "sha256", "size", "model", "forged", "stranger", "sender")} == {
        Reason.OUTPUT_MISSING, Reason.SHA256_MISMATCH, Reason.SIZE_MISMATCH, Reason.WRONG_MODEL,
        Reason.BAD_SIGNATURE, Reason.UNKNOWN_SIGNER, Reason.WRONG_SENDER}
    assert batched.batches is not None and batched.batches.loads.batches < len(cases)


class Refusing(LedgerMiddleware):
    """Raises inside the credit's transaction for one job: a bug, or a value the database refuses."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id

    def within_accept(self, session: Any, accepted: Accepted) -> None:
        if accepted.job_id == self.job_id:
            raise RuntimeError("refused by a middleware")


class Failing(DelegatingStore):
    """The real store, but ``on_copy(key)`` runs before a copy (freezing: after the reads, before the credit)
    and a HEAD of ``down`` fails as an unreachable store does."""

    def __init__(self, inner: ObjectStore, down: str, on_copy: Callable[[str], None] = lambda key: None) -> None:
        super().__init__(inner)
        self.down, self.on_copy = down, on_copy

    def stat(self, key: str) -> ObjectInfo | None:
        if key == self.down:
            raise StorageError("cannot reach the S3 service (test)")
        return self.inner.stat(key)

    def copy(self, source: str, dest: str, *, if_match: str) -> str | None:
        self.on_copy(source)
        return self.inner.copy(source, dest, if_match=if_match)


def test_a_delivery_that_fails_in_a_batch_fails_alone(
        batched: Ledger, catalog: Catalog, clock: Clock, object_store: ObjectStore, miner: Wallet) -> None:
    jobs = [image_job(batched, catalog, clock) for _ in range(6)]
    for job in jobs:
        object_store.put(job.output_key, PNG, "image/png")
    refused, unreachable = jobs[0], jobs[1]
    batched.middleware.append(Refusing(refused.id))
    batched.store = Failing(object_store, down=unreachable.output_key)
    verdicts = together(batched, [(sign(completion(job, miner, PNG), miner), None) for job in jobs])
    assert isinstance(verdicts[0], RuntimeError) and isinstance(verdicts[1], StorageError)  # each retried alone
    assert all(isinstance(v, CompletionVerdict) and v.accepted and not v.duplicate for v in verdicts[2:])
    for job in jobs[:2]:
        assert batched.reader.points_entries(job.id) == 0
        assert batched.reader.job(job.id).state is JobState.QUEUED  # type: ignore[union-attr]
    assert all(batched.reader.points_entries(job.id) == 1 for job in jobs[2:])


@pytest.mark.parametrize("meanwhile", ["another ledger credits it", "the trusted side ends it"])
def test_a_job_written_meanwhile_redoes_the_batch_item_by_item(
        batched: Ledger, engine: Engine, catalog: Catalog, clock: Clock, object_store: ObjectStore,
        miner: Wallet, meanwhile: str) -> None:
    """After this batch read its jobs, another ledger process credits one of them, or the trusted side ends it:
    the batch's transaction fails (a completion's primary key, a job no longer QUEUED) and rolls back, and each
    delivery is credited alone."""
    jobs = [image_job(batched, catalog, clock) for _ in range(4)]
    for job in jobs:
        object_store.put(job.output_key, PNG, "image/png")
    signed = [sign(completion(job, miner, PNG), miner) for job in jobs]
    other = Ledger(engine, catalog, object_store, clock=clock, pins=WeightPins(None))

    def write(key: str) -> None:
        if key != jobs[0].output_key:
            return
        if meanwhile == "another ledger credits it":
            assert other.record_completion(signed[0]).accepted
        else:
            batched.book.record_failure(jobs[0].id, "the operator ended it")

    batched.store = Failing(object_store, down="-", on_copy=write)
    verdicts = together(batched, [(s, None) for s in signed])
    if meanwhile == "another ledger credits it":
        assert outcome(verdicts[0]) == (True, True, Reason.DUPLICATE, 8.0, JobState.COMPLETED)
    else:
        assert outcome(verdicts[0]) == (False, False, Reason.JOB_CLOSED, 0.0, JobState.FAILED)
    assert all(outcome(v) == (True, False, None, 8.0, JobState.COMPLETED) for v in verdicts[1:])
    assert [batched.reader.points_entries(job.id) for job in jobs] == [int(meanwhile.startswith("another")), 1, 1, 1]


def test_read_signers_is_read_standing_for_each_miner(ledger: Ledger, engine: Engine, catalog: Catalog,
                                                       clock: Clock) -> None:
    """Audits (more than the recent window, ties in time), bans lifted and not, flags, an operator's keys; an
    unregistered address is left out."""
    wallets = [Wallet.create() for _ in range(7)]
    for w in wallets:
        register(ledger, w)
    job = image_job(ledger, catalog, clock)
    users = {wallets[3].address: "miner-op", wallets[4].address: "miner-op"}
    with session_scope(engine) as session:
        for address, user in users.items():
            session.get(Miner, address).broker_user = user  # type: ignore[union-attr]
    history = {
        0: "PPPPPPPPPPPFF" + "P",  # 14 audits: the failures still among the last 10
        1: "PF" + "P" * 9,  # 11 audits: the 10th and 11th latest share a time, and the failure is the later one
        6: "FPPPPPPPPPPP",  # a failure older than the last 10
        2: "", 3: "PF", 4: "", 5: "PPPPP",
    }
    events = {1: ["banned", "unbanned"], 2: ["banned"], 3: ["flagged"], 4: ["banned"],
              5: ["flagged", "unflagged", "banned", "unbanned", "flagged"]}
    with session_scope(engine) as session:
        for i, outcomes in history.items():
            for n, o in enumerate(outcomes):
                session.add(Audit(job_id=job.id, miner_address=wallets[i].address, detail="",
                                  outcome=AuditOutcome.PASSED if o == "P" else AuditOutcome.FAILED, metrics={},
                                  audited_at=float(n // 2), auditor=f"a{i}-{n}"))  # pairs share a time
        for i, kinds in events.items():
            for kind in kinds:
                session.add(MinerEvent(miner_address=wallets[i].address, kind=MinerEventKind(kind), detail="",
                                       created_at=0.0))
    with session_scope(engine) as session:
        addresses = [w.address for w in wallets]
        many = read_signers(session, [*addresses, Wallet.create().address])
        one = {address: read_standing(session, address) for address in addresses}
        assert {a: (m.address, m.broker_user) for a, (m, _) in many.items()} == \
            {a: (a, users.get(a)) for a in addresses}
    assert {a: standing for a, (_, standing) in many.items()} == one
    assert [one[w.address].banned for w in wallets] == [False, False, True, True, True, False, False]
    assert [one[w.address].recent_failed for w in wallets] == [2, 1, 0, 1, 0, 0, 0]
    assert one[wallets[3].address].odd_metrics and one[wallets[5].address].odd_metrics


def test_a_delivery_the_database_refuses_to_read_fails_alone(
        batched: Ledger, catalog: Catalog, clock: Clock, object_store: ObjectStore, miner: Wallet) -> None:
    """A job id PostgreSQL cannot even compare (a NUL byte) fails that delivery's reads as it would alone (kept in
    dead-letters by ``heurist.transient``), not the batch it was read with."""
    jobs = [image_job(batched, catalog, clock) for _ in range(3)]
    for job in jobs:
        object_store.put(job.output_key, PNG, "image/png")
    odd = Job("bad\x00id", jobs[0].spec, jobs[0].params, jobs[0].output_key, clock.now + 60)
    deliveries = [(sign(completion(job, miner, PNG), miner), None) for job in [odd, *jobs]]
    batches, batched.batches = batched.batches, None
    try:
        alone = outcome(batched.record_completion(*deliveries[0]))
    except Exception as err:
        alone = outcome(err)
    batched.batches = batches
    verdicts = together(batched, deliveries)
    assert outcome(verdicts[0]) == alone
    assert all(outcome(v) == (True, False, None, 8.0, JobState.COMPLETED) for v in verdicts[1:])


def test_an_outage_in_a_batch_reaches_every_delivery_at_once(
        engine: Engine, catalog: Catalog, clock: Clock, object_store: ObjectStore, miner: Wallet) -> None:
    """The database stops giving connections (a pool taken by others, a partition) while a batch credits: every
    delivery gets the outage (retried by ``heurist.transient``) after ONE wait, not one wait per item in turn
    (32 x the pool's 30 s timeout held every thread's message for 16 minutes)."""
    timeout_s, n = 0.4, 8
    small = make_engine(engine.url, pool_size=1, max_overflow=0, pool_timeout=timeout_s)
    ledger = Ledger(small, catalog, object_store, clock=clock, pins=WeightPins(None))
    ledger.batch(16, WINDOW_S)
    assert ledger.batches is not None
    for batcher in (ledger.batches.loads, ledger.batches.credits):
        batcher.window_s = WINDOW_S
    jobs = [image_job(ledger, catalog, clock) for _ in range(n)]
    for job in jobs:
        object_store.put(job.output_key, PNG, "image/png")
    held: list[Any] = []
    lock = threading.Lock()

    def take_the_pool(key: str) -> None:
        with lock:
            if not held:
                held.append(small.connect())  # the only connection: the credit's transaction cannot get one
                held.append(time.monotonic())

    ledger.store = Failing(object_store, down="-", on_copy=take_the_pool)
    try:
        verdicts = together(ledger, [(sign(completion(job, miner, PNG), miner), None) for job in jobs])
        waited = time.monotonic() - held[1]
    finally:
        held[0].close()
        ledger.batches.close()
    assert all(is_disconnect(v) for v in verdicts if isinstance(v, BaseException)), verdicts
    assert all(isinstance(v, BaseException) for v in verdicts)  # none credited, each retried
    assert waited < timeout_s * n / 2, f"{waited:.1f} s: the batch's items waited for the pool one after another"
    assert all(ledger.reader.points_entries(job.id) == 0 for job in jobs)
    small.dispose()
