"""Outputs sent inside their signed completion (``heurist.ledger.inline``): the ledger on SQLite and PostgreSQL with
a real SeaweedFS, and the miner runtime that chooses to inline.

What is protected: the ledger credits an inline output only on numbers it computed itself (sha256 and size of the
bytes it received, never the claim's), stores exactly those bytes at the frozen key with one PUT (the store keeps
their sha256), never reads or writes the job's mutable key for it (whatever someone PUT there with the job's URL is
ignored), and recounts a text job's tokens from those bytes without a GET. The field carries at most 32 KiB, as
base64 on the wire, and a 32 KiB completion still fits the ledger's 64 KiB message limit. A miner inlines only
small outputs with at least 60 s left, and ``miner_inline_bytes=0`` uploads everything.
"""

from __future__ import annotations

import base64
import hashlib
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from types import SimpleNamespace

import pytest
from kombu.serialization import dumps
from pydantic import ValidationError
from sqlalchemy.orm import Session

from heurist.access.backend import inbox_exchange
from heurist.access.senders import RECEIVED_HEADER, received_at
from heurist.catalog import Catalog
from heurist.celery_app import create_app
from heurist.deadletters.consumer import _header_bytes
from heurist.errors import StorageError
from heurist.identity import Wallet
from heurist.jobs import (
    INLINE_MARGIN_S,
    MAX_INLINE_BYTES,
    JobMessage,
    JobState,
    SignedCompletion,
    TextParams,
    sends_inline,
)
from heurist.ledger.inline import PutPending
from heurist.ledger.middleware import Accepted, LedgerMiddleware
from heurist.ledger.service import Ledger, Reason
from heurist.ledger.verify import Attempt
from heurist.settings import Settings
from heurist.storage.backend import ObjectInfo, ObjectStore
from heurist.storage.backends.s3 import S3ObjectStore
from heurist.storage.backends.s3_fast import FastS3ObjectStore
from heurist.storage.freeze import frozen_key
from heurist.storage.presigned import put_presigned
from tasks.names import RECORD_COMPLETION
from tests.fixtures.ledger import PNG, Clock, Job, answer, completion, credited_entries, image_job, sign, text_job
from tests.fixtures.s3 import DelegatingStore

EVIL = b"\x89PNG\r\n\x1a\n" + b"the attacker's bytes" * 40


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def inline(job: Job, wallet: Wallet, data: bytes, claimed: bytes | None = None, *, input_tokens: int = 0,
           output_tokens: int = 0, output_bytes: int | None = None, content_type: str | None = None
           ) -> SignedCompletion:
    """A completion claiming ``claimed`` (default: ``data``) with ``data`` inside, parsed from its wire form (base64
    JSON, as ``tasks.ledger`` receives it); ``content_type``: the claimed one instead of the job's."""
    claim = completion(job, wallet, data if claimed is None else claimed, input_tokens=input_tokens,
                       output_tokens=output_tokens, output_bytes=output_bytes)
    if content_type is not None:
        claim = claim.model_copy(update={"content_type": content_type})
    wire = sign(claim, wallet).model_dump(mode="json")
    return SignedCompletion.model_validate({**wire, "output": base64.b64encode(data).decode()})


class Recording(DelegatingStore):
    """The real store, noting each request the ledger makes: an inline completion must make one PUT and no read."""

    def __init__(self, inner: ObjectStore) -> None:
        super().__init__(inner)
        self.calls: list[tuple[str, str]] = []

    def stat(self, key: str) -> ObjectInfo | None:
        self.calls.append(("stat", key))
        return self.inner.stat(key)

    def get(self, key: str) -> bytes:
        self.calls.append(("get", key))
        return self.inner.get(key)

    def put(self, key: str, data: bytes, content_type: str) -> None:
        self.calls.append(("put", key))
        self.inner.put(key, data, content_type)

    def copy(self, source: str, dest: str, *, if_match: str) -> str | None:
        self.calls.append(("copy", source))
        return self.inner.copy(source, dest, if_match=if_match)


def assert_nothing_credited(ledger: Ledger, job: Job) -> None:
    assert credited_entries(ledger.engine, job.id) == [] and ledger.reader.points_entries(job.id) == 0


# ------------------------------------------------------------------------------------------ the ledger


@pytest.mark.parametrize("client", ["boto3", "fast"])
def test_an_inline_output_is_credited_once_and_frozen_by_the_ledger(
        ledger: Ledger, catalog: Catalog, clock: Clock, object_store: S3ObjectStore, s3_settings: Settings,
        miner: Wallet, client: str) -> None:
    """With the ledger's production store (fast) and boto3's: one PUT of exactly the bytes, nothing else."""
    store = Recording(object_store if client == "boto3" else FastS3ObjectStore.from_settings(s3_settings))
    ledger.store = store
    job = image_job(ledger, catalog, clock)
    signed = inline(job, miner, PNG)
    verdict = ledger.record_completion(signed)
    assert (verdict.accepted, verdict.state, verdict.points) == (True, JobState.COMPLETED, 8.0)
    frozen = frozen_key(job.output_key, sha(PNG))
    assert store.calls == [("put", frozen)]  # no HEAD, COPY or GET, and nothing at the mutable key
    info = object_store.stat(frozen)
    assert info is not None and (info.sha256, info.size, info.content_type) == (sha(PNG), len(PNG), "image/png")
    assert object_store.get(frozen) == PNG and object_store.stat(job.output_key) is None
    view = ledger.reader.job(job.id)
    assert view is not None and view.frozen_key == frozen and view.output_sha256 == sha(PNG)
    again = ledger.record_completion(SignedCompletion.model_validate(signed.model_dump(mode="json")))
    assert again.duplicate and again.reason is Reason.DUPLICATE
    assert [e.amount_micro for e in credited_entries(ledger.engine, job.id)] == [8_000_000]


@pytest.mark.parametrize("lie", ["sha256", "size"])
def test_inline_bytes_that_are_not_the_claim_are_refused(ledger: Ledger, catalog: Catalog, clock: Clock,
                                                         object_store: S3ObjectStore, miner: Wallet,
                                                         lie: str) -> None:
    job = image_job(ledger, catalog, clock)
    other = EVIL[: len(PNG)].ljust(len(PNG), b"!")  # same size, other bytes
    signed = (inline(job, miner, other, claimed=PNG) if lie == "sha256"
              else inline(job, miner, PNG, output_bytes=len(PNG) + 1))
    verdict = ledger.record_completion(signed)
    reason = Reason.SHA256_MISMATCH if lie == "sha256" else Reason.SIZE_MISMATCH
    assert (verdict.accepted, verdict.reason, verdict.state) == (False, reason, JobState.QUEUED)
    assert_nothing_credited(ledger, job)
    assert ledger.reader.rejections(job.id) == [(reason, miner.address)]
    for data in (PNG, other):
        assert object_store.stat(frozen_key(job.output_key, sha(data))) is None  # nothing frozen


def test_the_mutable_key_is_ignored_for_an_inline_completion(ledger: Ledger, catalog: Catalog, clock: Clock,
                                                             object_store: S3ObjectStore, miner: Wallet) -> None:
    """Someone PUT with the job's URL: the attacker's bytes neither spoil an honest inline output, nor make a bad
    one pass by sitting at the key with the claimed sha256."""
    job = image_job(ledger, catalog, clock)
    put_presigned(object_store.presign_put(job.output_key, 60), EVIL, "image/png")
    verdict = ledger.record_completion(inline(job, miner, PNG))
    assert (verdict.accepted, verdict.state) == (True, JobState.COMPLETED)
    view = ledger.reader.job(job.id)
    assert view is not None and view.frozen_key is not None and object_store.get(view.frozen_key) == PNG

    other = image_job(ledger, catalog, clock)
    put_presigned(object_store.presign_put(other.output_key, 60), PNG, "image/png")  # the claimed bytes
    garbage = bytes(len(PNG))
    refused = ledger.record_completion(inline(other, miner, garbage, claimed=PNG))
    assert (refused.accepted, refused.reason) == (False, Reason.SHA256_MISMATCH)
    assert_nothing_credited(ledger, other)


@pytest.mark.parametrize("claimed_out", [20, 25], ids=["honest", "lying count"])
def test_text_tokens_are_recounted_from_the_inline_bytes_without_a_get(
        ledger: Ledger, catalog: Catalog, clock: Clock, object_store: S3ObjectStore, miner: Wallet,
        claimed_out: int) -> None:
    store = Recording(object_store)
    ledger.store = store
    job = text_job(ledger, catalog, clock)
    data = answer(12, 20)
    verdict = ledger.record_completion(inline(job, miner, data, input_tokens=12, output_tokens=claimed_out))
    assert not [call for call in store.calls if call[0] != "put"]  # the answer was never read back
    if claimed_out == 20:
        view = ledger.reader.job(job.id)
        assert verdict.accepted and view is not None and (view.input_tokens, view.output_tokens) == (12, 20)
    else:
        assert (verdict.accepted, verdict.reason, verdict.state) == (False, Reason.TOKEN_MISMATCH, JobState.QUEUED)
        assert_nothing_credited(ledger, job)
        assert store.calls == []  # refused before it was stored: a refusal leaves nothing in storage


@pytest.mark.parametrize("claimed_type", ["text/html", "a\x01b", "image/png\r\nX-Injected: 1", "\u2603"])
def test_the_frozen_copy_has_the_jobs_type_never_the_claimed_one(
        ledger: Ledger, catalog: Catalog, clock: Clock, object_store: S3ObjectStore, s3_settings: Settings,
        miner: Wallet, claimed_type: str) -> None:
    """The content type is the miner's word: served as text/html it would be a page on the store's origin, and
    control characters or non-ASCII in a header made the PUT fail as a storage outage (retried without end)."""
    ledger.store = FastS3ObjectStore.from_settings(s3_settings)
    job = image_job(ledger, catalog, clock)
    verdict = ledger.record_completion(inline(job, miner, PNG, content_type=claimed_type))
    assert (verdict.accepted, verdict.state) == (True, JobState.COMPLETED)
    info = object_store.stat(frozen_key(job.output_key, sha(PNG)))
    assert info is not None and info.content_type == "image/png"


class Gated(DelegatingStore):
    """The real store, its PUTs held until ``release`` (or failing with ``fail``): the credit runs beside them."""

    def __init__(self, inner: ObjectStore, fail: bool = False) -> None:
        super().__init__(inner)
        self.fail, self.started, self.release = fail, threading.Event(), threading.Event()

    def put(self, key: str, data: bytes, content_type: str) -> None:
        self.started.set()
        assert self.release.wait(30)
        if self.fail:
            raise StorageError("the store went away in the middle of the PUT")
        self.inner.put(key, data, content_type)


class Noting(LedgerMiddleware):
    """Notes an outbox key in each credit's transaction, as the audit's sampling does; keeps what each verdict saw."""

    def __init__(self) -> None:
        self.keys: list[list[str]] = []

    def within_accept(self, session: Session, accepted: Accepted) -> None:
        accepted.outbox_keys.append(f"noted:{accepted.job_id}")

    def after_accept(self, ledger: Ledger, accepted: Accepted) -> None:
        self.keys.append(list(accepted.outbox_keys))


@pytest.fixture(params=["alone", "batched"])
def crediting(request: pytest.FixtureRequest, ledger: Ledger) -> Iterator[Ledger]:
    """The ledger crediting each completion alone, or in batches (``heurist.ledger.batch``) as ``heurist ledger``."""
    if request.param == "batched":
        ledger.batch(8, 0.0)
    yield ledger
    if ledger.batches is not None:
        ledger.batches.close()


def test_the_credit_commits_only_after_its_put(crediting: Ledger, catalog: Catalog, clock: Clock,
                                               object_store: S3ObjectStore, miner: Wallet) -> None:
    """The PUT runs beside the credit's transaction, which waits for it before it commits: while the PUT is held the
    job stays QUEUED and uncredited, and a client never hears of a job whose bytes are not in storage yet."""
    ledger = crediting
    store = ledger.store = Gated(object_store)
    noted = Noting()
    ledger.middleware.append(noted)
    job = image_job(ledger, catalog, clock)
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(ledger.record_completion, inline(job, miner, PNG))
        assert store.started.wait(30)
        time.sleep(0.3)  # time enough for the credit's statements, which must not commit yet
        assert not pending.done() and ledger.reader.job(job.id).state is JobState.QUEUED  # type: ignore[union-attr]
        assert_nothing_credited(ledger, job)
        store.release.set()
        verdict = pending.result(30)
    assert (verdict.accepted, verdict.state, verdict.points) == (True, JobState.COMPLETED, 8.0)
    assert object_store.get(frozen_key(job.output_key, sha(PNG))) == PNG
    assert noted.keys == [[f"noted:{job.id}"]]  # the transaction that let go of the PUT left nothing noted twice


def test_a_held_put_holds_no_lock_and_no_other_credit(crediting: Ledger, catalog: Catalog, clock: Clock,
                                                      object_store: S3ObjectStore, miner: Wallet) -> None:
    """S3 never holds the database for long: while one inline output's PUT is held (past the 0.1 s its transaction
    waits), another job's uploaded completion is credited (batched: by the same batch thread) and a client records a
    new job (on SQLite: the one write lock is free). Once the PUT is done, its job is credited too, once."""
    ledger = crediting
    store = ledger.store = Gated(object_store)
    held, other = image_job(ledger, catalog, clock), image_job(ledger, catalog, clock)
    object_store.put(other.output_key, PNG, "image/png")  # uploaded: the ledger makes no PUT for it
    with ThreadPoolExecutor(2) as pool:
        try:
            pending = pool.submit(ledger.record_completion, inline(held, miner, PNG))
            assert store.started.wait(30)
            time.sleep(0.3)
            verdict = pool.submit(ledger.record_completion, sign(completion(other, miner, PNG), miner)).result(10)
            assert (verdict.accepted, verdict.state) == (True, JobState.COMPLETED)
            image_job(ledger, catalog, clock)  # a client's write, while the PUT is still held
            assert not pending.done() and ledger.reader.job(held.id).state is JobState.QUEUED  # type: ignore[union-attr]
        finally:
            store.release.set()
        assert pending.result(30).points == 8.0
    assert [e.amount_micro for e in credited_entries(ledger.engine, held.id)] == [8_000_000]


@pytest.mark.parametrize("fails_after_s", [0.0, 0.3])
def test_a_put_that_fails_rolls_its_credit_back(crediting: Ledger, catalog: Catalog, clock: Clock,
                                                object_store: S3ObjectStore, miner: Wallet, fails_after_s: float
                                                ) -> None:
    """A store outage during the PUT, while the credit's transaction waits for it or after it let go (0.3 s), is
    the delivery's own exception (retried as an outage by ``heurist.transient``), with nothing credited; the
    retry, the store back, credits the job once."""
    ledger = crediting
    store = ledger.store = Gated(object_store, fail=True)
    threading.Timer(fails_after_s, store.release.set).start()
    job = image_job(ledger, catalog, clock)
    signed = inline(job, miner, PNG)
    with pytest.raises(StorageError, match="went away"):
        ledger.record_completion(signed)
    assert ledger.reader.job(job.id).state is JobState.QUEUED  # type: ignore[union-attr]
    assert_nothing_credited(ledger, job)
    store.fail = False
    verdict = ledger.record_completion(signed)
    assert (verdict.accepted, verdict.duplicate, verdict.points) == (True, False, 8.0)
    assert [e.amount_micro for e in credited_entries(ledger.engine, job.id)] == [8_000_000]


class DoneRightAfterTheWait(Future[str]):
    """A PUT that ends in the instant after the credit's bounded wait gave up, as a thread switch can make it."""

    def __init__(self, outcome: str | BaseException) -> None:
        super().__init__()
        self.outcome = outcome

    def result(self, timeout: float | None = None) -> str:
        if timeout is None or self.done():
            return super().result(timeout)
        try:
            return super().result(timeout)
        except TimeoutError:
            if isinstance(self.outcome, BaseException):
                self.set_exception(self.outcome)
            else:
                self.set_result(self.outcome)
            raise


@pytest.mark.parametrize("outcome", ["stored", StorageError("the store went away"), TimeoutError("its own")],
                         ids=["stored", "store-error", "own-timeout"])
def test_a_put_ending_as_the_wait_gives_up_is_read_for_its_own_outcome(outcome: str | BaseException) -> None:
    """Never the wait's TimeoutError (``heurist.transient`` would dead-letter the delivery, its job never credited):
    the PUT's result, or its own error, a timeout of its own included; still running, ``PutPending``."""
    attempt = Attempt(signed=None, received_at=0.0, frozen_key="frozen/x")  # type: ignore[arg-type]
    attempt.stored = DoneRightAfterTheWait(outcome)
    if isinstance(outcome, BaseException):
        with pytest.raises(type(outcome), match=str(outcome)):
            attempt.wait_stored(0.01)
    else:
        attempt.wait_stored(0.01)
    attempt.stored = Future()
    with pytest.raises(PutPending):
        attempt.wait_stored(0.01)


def test_an_inline_output_is_late_by_its_first_receipt(ledger: Ledger, catalog: Catalog, clock: Clock,
                                                       miner: Wallet) -> None:
    """No store clock: received after the deadline it is LATE (no points), unless a retry carries an earlier
    first receipt, which is what a ledger outage leaves it with."""
    job, early = image_job(ledger, catalog, clock, deadline_s=60.0), image_job(ledger, catalog, clock, deadline_s=60.0)
    clock.now += 61.5
    late = ledger.record_completion(inline(job, miner, PNG))
    assert (late.accepted, late.state, late.points) == (True, JobState.LATE, 0.0)
    view = ledger.reader.job(job.id)
    assert view is not None and view.error is not None and "the ledger's first receipt" in view.error
    kept = ledger.record_completion(inline(early, miner, PNG), received_at=clock.now - 30.0)
    assert (kept.accepted, kept.state, kept.points) == (True, JobState.COMPLETED, 8.0)


def test_a_retry_keeps_the_first_receipt_only_from_the_trusted_queue() -> None:
    """An inline output is judged late by its receipt; a retry after an outage carries the first one, believed
    only on the ``ledger`` queue (a miner writes its inbox's headers) and never in the future."""
    def request(exchange: str, stamp: object) -> SimpleNamespace:
        return SimpleNamespace(delivery_info={"exchange": exchange}, **{RECEIVED_HEADER: stamp})

    now = 1_000.0
    assert received_at(request("ledger", 900.5), now) == 900.5
    assert received_at(request(inbox_exchange("miner-0xabc"), 900.5), now) == now  # the miner's own header
    for bad in (None, "soon", "nan", "inf", 2_000.0, -1.0):
        assert received_at(request("ledger", bad), now) == now, bad


# ------------------------------------------------------------------------------------------ the message


def test_the_field_is_base64_on_the_wire_and_at_most_32_kib(catalog: Catalog) -> None:
    wallet = Wallet.create()
    assert MAX_INLINE_BYTES == 32_768
    job = Job(str(uuid.uuid4()), catalog["smollm2-135m"], TextParams(prompt="p", max_tokens=8), "outputs/x.json", 0.0)
    data = bytes(range(256)) * (MAX_INLINE_BYTES // 256)
    signed = inline(job, wallet, data)
    wire = signed.model_dump(mode="json")
    assert wire["output"] == base64.b64encode(data).decode() and signed.output == data
    assert SignedCompletion.model_validate_json(signed.model_dump_json()) == signed
    with pytest.raises(ValidationError, match="at most 32768"):
        inline(job, wallet, data + b"x")
    app = create_app(Settings(_env_file=None))  # type: ignore[call-arg]
    message = app.amqp.as_task_v2(str(uuid.uuid4()), RECORD_COMPLETION, args=[wire], kwargs={})
    _, _, body = dumps(message.body, serializer="json")
    size = len(body) + _header_bytes(message.headers)
    assert size < Settings(_env_file=None).max_message_bytes, size  # type: ignore[call-arg]


# ------------------------------------------------------------------------------------------ the miner


def test_sends_inline_boundaries() -> None:
    assert sends_inline(MAX_INLINE_BYTES, INLINE_MARGIN_S) and INLINE_MARGIN_S == 60.0
    assert not sends_inline(MAX_INLINE_BYTES + 1, 3600.0)
    assert not sends_inline(MAX_INLINE_BYTES + 1, 3600.0, max_bytes=10**6)  # a setting cannot raise the cap
    assert not sends_inline(1, INLINE_MARGIN_S - 0.01)
    assert sends_inline(100, 3600.0, max_bytes=100) and not sends_inline(101, 3600.0, max_bytes=100)
    assert not sends_inline(1, 3600.0, max_bytes=0)  # HEURIST_MINER_INLINE_BYTES=0: always upload
    assert Settings(_env_file=None).miner_inline_bytes == MAX_INLINE_BYTES  # type: ignore[call-arg]


@pytest.mark.parametrize(("inline_bytes", "deadline_s", "inlined"), [
    (MAX_INLINE_BYTES, 600.0, True), (0, 600.0, False), (MAX_INLINE_BYTES, 45.0, False)],
    ids=["inline", "inline_bytes=0", "under 60 s left"])
def test_the_miner_runtime_inlines_or_uploads_and_the_ledger_credits_either(
        ledger: Ledger, catalog: Catalog, object_store: S3ObjectStore, miner: Wallet,
        inline_bytes: int, deadline_s: float, inlined: bool) -> None:
    from tests.fixtures.ledger import DEVICE
    from workers.bench.path import NullPipeline
    from workers.miner.runtime import MinerRuntime

    spec = catalog["smollm2-135m"]
    pipeline = NullPipeline(spec, 2000)
    job_id, params = str(uuid.uuid4()), TextParams(prompt="Name three primary colors.", max_tokens=8)
    key, deadline = f"outputs/{spec.id}/{job_id}.json", time.time() + deadline_s
    ledger.book.create_job(job_id, spec, params, key, spec.queue, deadline)
    runtime = MinerRuntime(wallet=miner, device=DEVICE, pipelines={spec.id: pipeline}, inline_bytes=inline_bytes)
    signed = runtime.execute(JobMessage(job_id=job_id, model_id=spec.id, params=params, deadline_at=deadline,
                                        output_url=object_store.presign_put(key, int(deadline_s))))
    stored = object_store.stat(key)
    assert signed.completion.output_sha256 == sha(pipeline.data)
    if inlined:
        assert signed.output == pipeline.data and stored is None  # nothing uploaded
    else:
        assert signed.output is None and stored is not None and stored.sha256 == sha(pipeline.data)
    wire = SignedCompletion.model_validate(signed.model_dump(mode="json"))  # as tasks.miner sends it
    verdict = ledger.record_completion(wire)
    assert (verdict.accepted, verdict.state) == (True, JobState.COMPLETED)
    assert object_store.get(frozen_key(key, sha(pipeline.data))) == pipeline.data
