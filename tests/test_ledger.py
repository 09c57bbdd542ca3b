"""The ledger on real databases (SQLite and PostgreSQL) and a real S3 store (SeaweedFS): verification,
exactly-once credit (also under concurrent delivery), deadlines, and the read side."""

from __future__ import annotations

import hashlib
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import Engine, delete, func, select, update
from sqlalchemy.exc import DBAPIError

from heurist.catalog import Catalog
from heurist.catalog.attestation import weights_digest
from heurist.db.engine import make_engine, session_scope
from heurist.errors import InvalidJobError
from heurist.identity import Wallet
from heurist.jobs import ImageParams, JobState, MinerHello, SignedCompletion, SignedHello, TextParams
from heurist.ledger import tables
from heurist.ledger.middleware import Accepted, LedgerMiddleware, Refused
from heurist.ledger.service import CompletionVerdict, Ledger, Reason
from heurist.points import MICRO, job_points, to_micro
from heurist.signing import sign_message
from heurist.storage.backend import ObjectInfo, ObjectStore
from tests.fixtures.ledger import (
    DEVICE,
    PNG,
    Clock,
    Job,
    answer,
    completion,
    credited_entries,
    deliver,
    image_job,
    register,
    sign,
    text_job,
)
from tests.fixtures.s3 import DelegatingStore


def outcome(verdict: CompletionVerdict) -> tuple[bool, Reason | None, JobState | None]:
    return verdict.accepted, verdict.reason, verdict.state


def assert_nothing_credited(ledger: Ledger, job: Job) -> None:
    assert ledger.reader.points_entries(job.id) == 0
    view = ledger.reader.job(job.id)
    assert view is not None and view.points == 0


# ------------------------------------------------------------------------------------------- credit


def test_image_completion_credits_exactly_the_formula(ledger: Ledger, engine: Engine, catalog: Catalog,
                                                      clock: Clock, object_store: ObjectStore,
                                                      miner: Wallet) -> None:
    job = image_job(ledger, catalog, clock)  # sd15, 1024x1024, 40 steps: the seed's 8-unit example
    _, verdict = deliver(ledger, object_store, job, miner)
    assert verdict.accepted and verdict.reason is None and not verdict.duplicate
    assert verdict.points == 8.0 and verdict.points_micro == 8 * MICRO
    assert verdict.state is JobState.COMPLETED
    view = ledger.reader.job(job.id)
    assert view is not None
    assert (view.state, view.points, view.points_micro, view.miner) == (JobState.COMPLETED, 8.0, 8 * MICRO,
                                                                       miner.address)
    assert view.output_sha256 == hashlib.sha256(PNG).hexdigest() and view.output_key == job.output_key
    assert view.error is None and view.finished_at == clock.now
    [entry] = credited_entries(engine, job.id)
    assert entry.idempotency_key == f"job:{job.id}" and entry.kind is tables.EntryKind.JOB_CREDIT
    assert entry.amount_micro == 8_000_000 and entry.miner_address == miner.address
    standing = {m.address: m for m in ledger.reader.miner_points()}[miner.address]
    assert (standing.jobs, standing.points) == (1, 8.0)


def test_sdxl_coefficient_applies(ledger: Ledger, catalog: Catalog, clock: Clock, object_store: ObjectStore,
                                  miner: Wallet) -> None:
    job = image_job(ledger, catalog, clock, model="sdxl", width=1024, height=1024, steps=30)
    _, verdict = deliver(ledger, object_store, job, miner)
    expected = (1024 * 1024 / 512**2) * (30 / 20) * catalog["sdxl"].coefficient
    assert verdict.points_micro == to_micro(expected) and verdict.points == pytest.approx(expected)


@pytest.mark.parametrize("model", ["smollm2-135m", "mixtral-8x7b"])
def test_text_completion_credits_tokens_times_coefficient(ledger: Ledger, catalog: Catalog, clock: Clock,
                                                          object_store: ObjectStore, miner: Wallet,
                                                          model: str) -> None:
    job = text_job(ledger, catalog, clock, model=model)
    _, verdict = deliver(ledger, object_store, job, miner, answer(12, 20), input_tokens=12, output_tokens=20)
    coefficient = catalog[model].coefficient
    assert verdict.accepted and verdict.points_micro == to_micro((12 + 20) / 1000 * coefficient)
    view = ledger.reader.job(job.id)
    assert view is not None and (view.input_tokens, view.output_tokens, view.tokens) == (12, 20, 32)


# (stored answer, claimed input, claimed output): each is refused as token_mismatch (issue 13, finding 1).
TOKEN_LIES = {
    "inflated claim (the live attack: 34+12 stored, 82+512 claimed)": (answer(34, 12), 82, 512),
    "deflated claim (a colluding client pays nothing)": (answer(34, 12), 0, 0),
    "output count only": (answer(34, 12), 34, 13),
    "the answer's own count field lies": (answer(34, 12, stated_output_tokens=30), 34, 30),
    "more tokens stored than max_tokens": (answer(34, 40), 34, 40),
    "more prompt tokens than the prompt has bytes": (answer(6 + 65, 12), 6 + 65, 12),
    "not a TextOutput": (b'{"text": "red, blue, yellow"}', 34, 12),
}


@pytest.mark.parametrize("lie", TOKEN_LIES)
def test_text_token_counts_come_from_the_stored_answer(ledger: Ledger, catalog: Catalog, clock: Clock,
                                                       object_store: ObjectStore, miner: Wallet, lie: str) -> None:
    data, claimed_in, claimed_out = TOKEN_LIES[lie]
    prompt = "héllo"  # 6 UTF-8 bytes: no tokenizer makes more than 6 + 64 prompt tokens of it
    job = text_job(ledger, catalog, clock, prompt=prompt, max_tokens=32)
    _, verdict = deliver(ledger, object_store, job, miner, data, input_tokens=claimed_in, output_tokens=claimed_out)
    assert (verdict.accepted, verdict.reason, verdict.points_micro) == (False, Reason.TOKEN_MISMATCH, 0)
    assert verdict.state is JobState.QUEUED  # held against the miner; the job stays open for another
    assert_nothing_credited(ledger, job)
    [(reason, who)] = ledger.reader.rejections(job.id)
    assert (reason, who) == (Reason.TOKEN_MISMATCH, miner.address)

    honest = text_job(ledger, catalog, clock, prompt=prompt, max_tokens=32)  # the same answer, claimed truly
    _, verdict = deliver(ledger, object_store, honest, miner, answer(34, 12), input_tokens=34, output_tokens=12)
    spec = catalog["smollm2-135m"]
    assert verdict.accepted and verdict.points_micro == to_micro(job_points(spec, honest.params, 34, 12))


def test_params_come_from_the_job_record_not_the_miner(ledger: Ledger, engine: Engine, catalog: Catalog,
                                                       clock: Clock, object_store: ObjectStore,
                                                       miner: Wallet) -> None:
    """A miner can claim tokens on an image job or pad its timings: credit still follows the job record."""
    job = image_job(ledger, catalog, clock, width=512, height=512, steps=20)
    _, verdict = deliver(ledger, object_store, job, miner, input_tokens=10**9, output_tokens=10**9)
    assert verdict.points == 1.0
    # The record's params are what the job was created with, whatever the miner ran.
    with session_scope(engine) as session:
        row = session.get(tables.Job, job.id)
        assert row is not None and row.params == job.params.model_dump(mode="json")


# ------------------------------------------------------------------------------------- exactly once


def test_same_completion_delivered_twice_credits_once(ledger: Ledger, catalog: Catalog, clock: Clock,
                                                      object_store: ObjectStore, miner: Wallet) -> None:
    job = image_job(ledger, catalog, clock)
    signed, first = deliver(ledger, object_store, job, miner)
    clock.now += 1
    second = ledger.record_completion(signed)
    assert second.duplicate and second.reason is Reason.DUPLICATE
    assert (second.accepted, second.points, second.state) == (first.accepted, first.points, first.state)
    assert ledger.reader.points_entries(job.id) == 1 and ledger.reader.job(job.id).points == 8.0  # type: ignore[union-attr]
    assert ledger.reader.rejections(job.id) == [(Reason.DUPLICATE, miner.address)]
    assert ledger.reader.totals().points_total == 8.0


class BarrierStore(DelegatingStore):
    """The real store, but each HEAD waits for the other delivery: both pass every read before either
    writes, which is the race a read-then-write check alone would lose."""

    def __init__(self, inner: ObjectStore, barrier: threading.Barrier) -> None:
        super().__init__(inner)
        self.barrier = barrier

    def stat(self, key: str) -> ObjectInfo | None:
        self.barrier.wait(timeout=30)
        return self.inner.stat(key)


def _race(migrated_url: str, catalog: Catalog, object_store: ObjectStore, clock: Clock,
          deliveries: list[SignedCompletion]) -> list[CompletionVerdict]:
    """Each delivery on its own ledger worker (own engine, own thread), forced to interleave."""
    barrier = threading.Barrier(len(deliveries))
    engines = [make_engine(migrated_url) for _ in deliveries]
    workers = [Ledger(e, catalog, BarrierStore(object_store, barrier), clock=clock) for e in engines]
    try:
        with ThreadPoolExecutor(len(deliveries)) as pool:
            return list(pool.map(lambda w, s: w.record_completion(s), workers, deliveries))
    finally:
        for e in engines:
            e.dispose()


def test_concurrent_deliveries_credit_once(migrated_url: str, ledger: Ledger, catalog: Catalog, clock: Clock,
                                           object_store: ObjectStore, miner: Wallet) -> None:
    job = image_job(ledger, catalog, clock)
    object_store.put(job.output_key, PNG, "image/png")
    signed = sign(completion(job, miner, PNG), miner)
    verdicts = _race(migrated_url, catalog, object_store, clock, [signed, signed])
    assert sorted(v.duplicate for v in verdicts) == [False, True]
    assert all(v.accepted and v.points == 8.0 and v.state is JobState.COMPLETED for v in verdicts)
    assert ledger.reader.points_entries(job.id) == 1
    assert ledger.reader.totals().points_total == 8.0


def test_two_miners_racing_on_one_job_credit_one(migrated_url: str, ledger: Ledger, catalog: Catalog,
                                                 clock: Clock, object_store: ObjectStore,
                                                 miner: Wallet) -> None:
    other = Wallet.create()
    register(ledger, other)
    job = image_job(ledger, catalog, clock)
    object_store.put(job.output_key, PNG, "image/png")
    deliveries = [sign(completion(job, w, PNG), w) for w in (miner, other)]
    verdicts = _race(migrated_url, catalog, object_store, clock, deliveries)
    assert sorted(v.duplicate for v in verdicts) == [False, True]
    winner = next(d for d, v in zip(deliveries, verdicts, strict=True) if not v.duplicate).completion.miner
    view = ledger.reader.job(job.id)
    assert view is not None and view.miner == winner and view.points == 8.0
    points = {m.address: m.points for m in ledger.reader.miner_points()}
    assert sorted([points[miner.address], points[other.address]]) == [0.0, 8.0]


def test_many_concurrent_redeliveries_credit_once(ledger: Ledger, catalog: Catalog, clock: Clock,
                                                  object_store: ObjectStore, miner: Wallet) -> None:
    job = image_job(ledger, catalog, clock)
    object_store.put(job.output_key, PNG, "image/png")
    signed = sign(completion(job, miner, PNG), miner)
    with ThreadPoolExecutor(8) as pool:
        verdicts = list(pool.map(lambda _: ledger.record_completion(signed), range(8)))
    assert [v.duplicate for v in verdicts].count(False) == 1
    assert all(v.points == 8.0 for v in verdicts) and ledger.reader.points_entries(job.id) == 1


def test_points_entries_are_append_only_in_the_database(engine: Engine, ledger: Ledger, catalog: Catalog,
                                                        clock: Clock, object_store: ObjectStore,
                                                        miner: Wallet) -> None:
    job = image_job(ledger, catalog, clock)
    deliver(ledger, object_store, job, miner)
    for statement in (update(tables.PointsEntry).values(amount_micro=10**12), delete(tables.PointsEntry)):
        with pytest.raises(DBAPIError, match="append-only"), session_scope(engine) as session:
            session.execute(statement.where(tables.PointsEntry.job_id == job.id))
    assert ledger.reader.job(job.id).points == 8.0  # type: ignore[union-attr]


# ------------------------------------------------------------------------------------------ refusals


def test_bad_signature_is_rejected_and_leaves_the_job_alone(ledger: Ledger, catalog: Catalog, clock: Clock,
                                                            object_store: ObjectStore, miner: Wallet) -> None:
    job = image_job(ledger, catalog, clock)
    object_store.put(job.output_key, PNG, "image/png")
    forger = Wallet.create()
    register(ledger, forger)
    claimed_by_miner = completion(job, miner, PNG)
    forged = SignedCompletion(completion=claimed_by_miner,
                              signature=sign_message(forger, claimed_by_miner))
    verdict = ledger.record_completion(forged)
    assert (verdict.accepted, verdict.reason, verdict.points) == (False, Reason.BAD_SIGNATURE, 0.0)
    # Tampering after signing (inflating tokens) breaks the signature too.
    honest = sign(completion(job, miner, PNG), miner)
    inflated = honest.completion.model_copy(update={"output_tokens": 99})
    tampered = honest.model_copy(update={"completion": inflated})
    assert ledger.record_completion(tampered).reason is Reason.BAD_SIGNATURE
    view = ledger.reader.job(job.id)
    assert view is not None and view.state is JobState.QUEUED and view.miner is None
    assert_nothing_credited(ledger, job)
    assert ledger.reader.rejections(job.id) == [(Reason.BAD_SIGNATURE, None)] * 2
    # The real miner can still deliver.
    assert ledger.record_completion(honest).points == 8.0


def test_unknown_signer_is_rejected(ledger: Ledger, catalog: Catalog, clock: Clock,
                                    object_store: ObjectStore) -> None:
    stranger = Wallet.create()  # signs correctly but never said hello
    job = image_job(ledger, catalog, clock)
    _, verdict = deliver(ledger, object_store, job, stranger)
    assert (verdict.accepted, verdict.reason) == (False, Reason.UNKNOWN_SIGNER)
    assert ledger.reader.job(job.id).state is JobState.QUEUED  # type: ignore[union-attr]
    assert_nothing_credited(ledger, job)
    assert ledger.reader.rejections(job.id) == [(Reason.UNKNOWN_SIGNER, stranger.address)]


def test_unknown_job_is_rejected(ledger: Ledger, catalog: Catalog, clock: Clock, miner: Wallet) -> None:
    params = ImageParams(prompt="x", width=512, height=512, steps=20, guidance=7.5, seed=0)
    ghost = Job(str(uuid.uuid4()), catalog["sd15"], params, "outputs/none.png", 0)
    verdict = ledger.record_completion(sign(completion(ghost, miner, PNG), miner))
    assert outcome(verdict) == (False, Reason.UNKNOWN_JOB, None)
    assert ledger.reader.job(ghost.id) is None
    assert ledger.reader.rejections(ghost.id) == [(Reason.UNKNOWN_JOB, miner.address)]


def test_wrong_model_is_rejected(ledger: Ledger, catalog: Catalog, clock: Clock, object_store: ObjectStore,
                                 miner: Wallet) -> None:
    job = image_job(ledger, catalog, clock, model="sdxl")
    object_store.put(job.output_key, PNG, "image/png")
    verdict = ledger.record_completion(sign(completion(job, miner, PNG, model_id="sd15"), miner))
    assert (verdict.accepted, verdict.reason) == (False, Reason.WRONG_MODEL)
    assert ledger.reader.job(job.id).state is JobState.QUEUED  # type: ignore[union-attr]
    assert_nothing_credited(ledger, job)


def test_a_bad_result_is_held_against_its_miner_and_leaves_the_job_open(
        ledger: Ledger, catalog: Catalog, clock: Clock, object_store: ObjectStore, miner: Wallet) -> None:
    """Issue 13, finding 2: a bad result used to end the job REJECTED, whoever sent it; any registered miner that
    read a job id could end it. Now it is recorded against its sender, and the job stays open for another miner
    (the ledger consumer re-sends it: tests/test_sweep.py)."""
    job = image_job(ledger, catalog, clock)
    object_store.put(job.output_key, b"something else entirely", "image/png")
    verdict = ledger.record_completion(sign(completion(job, miner, PNG), miner))
    assert outcome(verdict) == (False, Reason.SHA256_MISMATCH, JobState.QUEUED)
    view = ledger.reader.job(job.id)
    assert view is not None and view.state is JobState.QUEUED and view.miner is None and view.error is None
    assert_nothing_credited(ledger, job)
    assert ledger.reader.rejections(job.id) == [(Reason.SHA256_MISMATCH, miner.address)]
    _, honest = deliver(ledger, object_store, job, miner)  # the next try, done right, is credited
    assert honest.accepted and honest.state is JobState.COMPLETED


def test_attested_weights_other_than_the_pinned_ones_reject_the_job(
        ledger: Ledger, catalog: Catalog, clock: Clock, object_store: ObjectStore, miner: Wallet) -> None:
    """A miner whose signed attestation names modified model files earns nothing for the job."""
    job = image_job(ledger, catalog, clock)
    object_store.put(job.output_key, PNG, "image/png")
    modified = weights_digest({**job.spec.files, "v1-5-pruned-emaonly.safetensors": "0" * 64})
    verdict = ledger.record_completion(sign(completion(job, miner, PNG, weights_sha256=modified), miner))
    assert outcome(verdict) == (False, Reason.WEIGHTS_MISMATCH, JobState.QUEUED)
    assert_nothing_credited(ledger, job)
    _, honest = deliver(ledger, object_store, job, miner)  # the same job with the pinned files still pays
    assert honest.accepted and honest.points_micro > 0


def test_missing_output_rejects_the_job(ledger: Ledger, catalog: Catalog, clock: Clock,
                                        miner: Wallet) -> None:
    job = image_job(ledger, catalog, clock)  # nothing was uploaded
    verdict = ledger.record_completion(sign(completion(job, miner, PNG), miner))
    assert outcome(verdict) == (False, Reason.OUTPUT_MISSING, JobState.QUEUED)
    assert_nothing_credited(ledger, job)


def test_size_mismatch_rejects_the_job(ledger: Ledger, catalog: Catalog, clock: Clock,
                                       object_store: ObjectStore, miner: Wallet) -> None:
    job = image_job(ledger, catalog, clock)
    object_store.put(job.output_key, PNG, "image/png")
    verdict = ledger.record_completion(sign(completion(job, miner, PNG, output_bytes=len(PNG) + 1), miner))
    assert outcome(verdict) == (False, Reason.SIZE_MISMATCH, JobState.QUEUED)
    assert_nothing_credited(ledger, job)


def test_a_rejected_job_still_takes_a_valid_completion(ledger: Ledger, catalog: Catalog, clock: Clock,
                                                       object_store: ObjectStore, miner: Wallet) -> None:
    """A botched upload is not the end: a redelivery with the object intact is verified and credited."""
    job = image_job(ledger, catalog, clock)
    assert ledger.record_completion(sign(completion(job, miner, PNG), miner)).reason is Reason.OUTPUT_MISSING
    _, verdict = deliver(ledger, object_store, job, miner)
    assert verdict.accepted and verdict.points == 8.0 and ledger.reader.job(job.id).error is None  # type: ignore[union-attr]


def test_completion_after_the_deadline_is_late_and_earns_nothing(ledger: Ledger, catalog: Catalog,
                                                                 clock: Clock, object_store: ObjectStore,
                                                                 miner: Wallet) -> None:
    """Late by the store's clock: the object is uploaded after the deadline (tests/test_frozen_outputs.py has the
    ledger's own clock running late over an upload made in time)."""
    job = image_job(ledger, catalog, clock, deadline_s=-2)  # the store's LastModified (floored) is after it
    signed, verdict = deliver(ledger, object_store, job, miner)
    assert (verdict.accepted, verdict.reason, verdict.points, verdict.state) == (
        True, Reason.LATE, 0.0, JobState.LATE)
    view = ledger.reader.job(job.id)
    assert view is not None and view.state is JobState.LATE and view.state.has_output
    assert view.output_sha256 == hashlib.sha256(PNG).hexdigest()  # the output is kept
    assert_nothing_credited(ledger, job)
    again = ledger.record_completion(signed)
    assert again.duplicate and again.state is JobState.LATE and again.points == 0


# ------------------------------------------------------------------------------- failures, miners, reads


def test_a_failed_job_is_final(ledger: Ledger, catalog: Catalog, clock: Clock, object_store: ObjectStore,
                               miner: Wallet) -> None:
    """Issue 13, finding 2 (refund-then-complete): FAILED used to take a later completion, after the gateway
    had refunded the client, who then got the output for free. FAILED is set only by the trusted side and is
    final: a later completion is refused as job_closed, credits nothing and delivers nothing."""
    job = image_job(ledger, catalog, clock)
    ledger.record_failure(job.id, "could not enqueue: broker unreachable")
    view = ledger.reader.job(job.id)
    assert view is not None and view.state is JobState.FAILED
    _, verdict = deliver(ledger, object_store, job, miner)
    assert outcome(verdict) == (False, Reason.JOB_CLOSED, JobState.FAILED)
    assert_nothing_credited(ledger, job)
    done = image_job(ledger, catalog, clock)
    assert deliver(ledger, object_store, done, miner)[1].accepted
    ledger.record_failure(done.id, "late failure")  # a verdict is never undone by a failure
    view = ledger.reader.job(done.id)
    assert view is not None and view.state is JobState.COMPLETED and view.error is None
    ledger.record_failure("no-such-job", "ignored")


def test_register_miner(ledger: Ledger, engine: Engine, clock: Clock) -> None:
    wallet = Wallet.create()
    assert not ledger.reader.is_registered(wallet.address)
    hello = MinerHello(miner=wallet.address, models=["sd15"], queues=["vram8.sd15"], device=DEVICE,
                       started_at=clock.now)
    forged = SignedHello(hello=hello, signature=sign_message(Wallet.create(), hello))
    refused = ledger.register_miner(forged)
    assert (refused.accepted, refused.reason) == (False, Reason.BAD_SIGNATURE)
    assert not ledger.reader.is_registered(wallet.address)
    first_seen = clock.now
    signed = SignedHello(hello=hello, signature=sign_message(wallet, hello))
    assert ledger.register_miner(signed).accepted
    clock.now += 100
    verdict = register(ledger, wallet, models=("sd15", "sdxl"))
    assert verdict.accepted and verdict.address == wallet.address
    assert ledger.reader.is_registered(wallet.address) and ledger.reader.is_registered(wallet.address.lower())
    assert not ledger.reader.is_registered("not an address")
    with session_scope(engine) as session:
        row = session.get(tables.Miner, wallet.address)
        assert row is not None and (row.first_seen, row.last_seen) == (first_seen, clock.now)
        assert row.models == ["sd15", "sdxl"] and row.device["name"] == "test-cpu"


def test_create_job_refuses_params_of_the_wrong_kind(ledger: Ledger, catalog: Catalog) -> None:
    params = TextParams(prompt="x", max_tokens=4, temperature=0.0, seed=0)
    with pytest.raises(InvalidJobError, match="image"):
        ledger.book.create_job("j", catalog["sd15"], params, "k", "q", 0.0)
    assert ledger.reader.job("j") is None


def test_read_side_totals(ledger: Ledger, engine: Engine, catalog: Catalog, clock: Clock,
                          object_store: ObjectStore, miner: Wallet) -> None:
    before = ledger.reader.totals()
    done = image_job(ledger, catalog, clock)
    deliver(ledger, object_store, done, miner)
    image_job(ledger, catalog, clock)
    failed = image_job(ledger, catalog, clock)
    ledger.record_failure(failed.id, "boom")
    rejected = image_job(ledger, catalog, clock)
    ledger.record_completion(sign(completion(rejected, miner, PNG), miner))  # nothing uploaded: stays queued
    after = ledger.reader.totals()
    expected = {JobState.COMPLETED: 1, JobState.QUEUED: 2, JobState.FAILED: 1, JobState.REJECTED: 0,
                JobState.LATE: 0}
    assert {s: after.jobs[s] - before.jobs[s] for s in JobState} == expected
    assert after.points_total - before.points_total == 8.0
    assert after.rejections - before.rejections == 1 and after.miners >= 1
    with session_scope(engine) as session:
        total = session.scalar(select(func.sum(tables.PointsEntry.amount_micro)))
    assert int(total or 0) == after.points_total_micro
    assert ledger.reader.job("never-created") is None


class Recorder(LedgerMiddleware):
    """Keeps what the ledger hands its middleware; raises when asked, to show a verdict survives that."""

    def __init__(self, explode: bool = False) -> None:
        self.accepted: list[Accepted] = []
        self.refused: list[Refused] = []
        self.explode = explode

    def after_accept(self, ledger: Ledger, accepted: Accepted) -> None:
        self.accepted.append(accepted)
        if self.explode:
            raise RuntimeError("middleware bug")

    def after_refuse(self, ledger: Ledger, refused: Refused) -> None:
        self.refused.append(refused)


def test_middleware_gets_the_verified_context_once_and_cannot_undo_a_verdict(
        ledger: Ledger, catalog: Catalog, clock: Clock, object_store: ObjectStore, miner: Wallet) -> None:
    broken, recorder = Recorder(explode=True), Recorder()
    ledger.middleware += [broken, recorder]
    job = image_job(ledger, catalog, clock)
    clock.now += 5.0
    signed, verdict = deliver(ledger, object_store, job, miner)
    assert verdict.accepted and ledger.record_completion(signed).duplicate  # a duplicate is no new acceptance
    [seen] = recorder.accepted
    assert (seen.job_id, seen.miner, seen.spec.id, seen.params) == (job.id, miner.address, job.spec.id, job.params)
    assert seen.wall_s == pytest.approx(5.0) and seen.registered_device == DEVICE and not seen.late
    assert seen.standing.audited == 0 and not seen.standing.banned
    stranger = Wallet.create()
    ledger.record_completion(sign(completion(job, stranger, PNG), stranger))
    assert [(r.job_id, r.reason) for r in recorder.refused] == [(job.id, Reason.UNKNOWN_SIGNER)]
