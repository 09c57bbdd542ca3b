"""Credited outputs are frozen and deadlines are judged by the store's clock: the ledger on SQLite and
PostgreSQL with a real SeaweedFS (issue 12, items 5 and the deadline half of 7).

What SeaweedFS 4.48 does is checked here rather than assumed: it honours ``CopySourceIfMatch`` (412 on a
stale ETag), keeps the sha256 and content type on a copy, reports LastModified in whole seconds, and refuses
an expired presigned PUT with 403.
"""

from __future__ import annotations

import hashlib
import math
import time
from urllib.parse import parse_qs, urlsplit

import pytest
from celery import Celery
from sqlalchemy import Engine, update

from heurist.catalog import Catalog
from heurist.client import Client
from heurist.db.engine import session_scope
from heurist.dispatch import DeadlinePassedError, job_message, upload_expiry_s
from heurist.identity import Wallet
from heurist.jobs import ImageParams, JobState
from heurist.ledger import tables
from heurist.ledger.redispatch import redispatch
from heurist.ledger.service import Ledger, Reason
from heurist.settings import Settings
from heurist.storage.backend import ObjectStore
from heurist.storage.backends.s3 import S3ObjectStore
from heurist.storage.freeze import freeze, frozen_key
from heurist.storage.presigned import UploadRefusedError, put_presigned
from tests.fixtures.ledger import PNG, Clock, completion, credited_entries, deliver, image_job, sign
from tests.fixtures.s3 import DelegatingStore

EVIL = b"\x89PNG\r\n\x1a\n" + b"the attacker's bytes" * 40


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------------ what the store does


def test_seaweedfs_honours_the_copy_condition(object_store: S3ObjectStore) -> None:
    object_store.put("outputs/a.png", PNG, "image/png")
    verified = object_store.stat("outputs/a.png")
    assert verified is not None and verified.etag and verified.sha256 == sha(PNG)
    object_store.put("outputs/a.png", EVIL, "image/png")  # overwritten after the HEAD
    assert object_store.copy("outputs/a.png", "frozen/stale.png", if_match=verified.etag) is None
    assert object_store.stat("frozen/stale.png") is None  # a failed condition copies nothing
    current = object_store.stat("outputs/a.png")
    assert current is not None and current.etag != verified.etag
    assert object_store.copy("outputs/a.png", "frozen/now.png", if_match=current.etag or "") == current.etag
    copied = object_store.stat("frozen/now.png")
    assert copied is not None and (copied.sha256, copied.content_type, copied.size) == (sha(EVIL), "image/png",
                                                                                          len(EVIL))


def test_last_modified_is_the_store_clock_in_whole_seconds(object_store: S3ObjectStore) -> None:
    before = time.time()
    object_store.put("outputs/t.png", PNG, "image/png")
    after = time.time()
    info = object_store.stat("outputs/t.png")
    assert info is not None and info.last_modified is not None
    assert info.last_modified == int(info.last_modified)  # floored to the second
    assert math.floor(before) <= info.last_modified <= after


def test_no_put_url_is_ever_made_for_a_frozen_key(object_store: S3ObjectStore) -> None:
    with pytest.raises(ValueError, match="frozen/"):
        object_store.presign_put(frozen_key("outputs/sd15/j.png", sha(PNG)), 60)


def test_put_url_lifetime_is_the_time_left_until_the_deadline_capped() -> None:
    assert upload_expiry_s(1000.9 + 30.7, 1000.9, 3600) == 30
    assert upload_expiry_s(1000.0 + 7200, 1000.0, 3600) == 3600
    assert upload_expiry_s(1000.0 + 1.0, 1000.0, 3600) == 1
    for deadline in (1000.5, 999.0):
        with pytest.raises(DeadlinePassedError, match="submit it again"):
            upload_expiry_s(deadline, 1000.0, 3600)


def test_put_url_expires_at_the_deadline(object_store: S3ObjectStore, catalog: Catalog) -> None:
    """The store itself refuses an upload after the deadline (403), whoever holds the URL."""
    spec = catalog["sd15"]
    params = ImageParams(prompt="p", width=512, height=512, steps=20, guidance=7.5, seed=1)
    now = time.time()
    message = job_message("j", spec.id, params, "outputs/sd15/j.png", now + 2.5, object_store, 3600, now=now)
    query = parse_qs(urlsplit(message.output_url).query)
    assert query["X-Amz-Expires"] == ["2"]
    put_presigned(message.output_url, PNG, "image/png")  # in time: stored
    time.sleep(max(0.0, now + 3.2 - time.time()))
    with pytest.raises(UploadRefusedError, match="403"):
        put_presigned(message.output_url, EVIL, "image/png")
    assert object_store.get("outputs/sd15/j.png") == PNG


# ------------------------------------------------------------------------------------------ the ledger


def _attacker_put(store: ObjectStore, key: str, data: bytes) -> None:
    """What a miner who copied the job's URL from the queue can do until the URL expires."""
    put_presigned(store.presign_put(key, 60), data, "image/png")


def test_credited_output_is_frozen_and_an_overwrite_changes_nothing(ledger: Ledger, catalog: Catalog,
                                                                   clock: Clock, object_store: ObjectStore,
                                                                   miner: Wallet, s3_settings: Settings) -> None:
    job = image_job(ledger, catalog, clock)
    _, verdict = deliver(ledger, object_store, job, miner)
    assert verdict.accepted and verdict.state is JobState.COMPLETED
    view = ledger.reader.job(job.id)
    assert view is not None and view.frozen_key == frozen_key(job.output_key, sha(PNG))
    _attacker_put(object_store, job.output_key, EVIL)
    assert object_store.get(job.output_key) == EVIL  # the mutable key is the attacker's now
    client = Client(s3_settings, catalog=catalog, store=object_store, ledger=ledger.reader)
    result = client.to_result(view)
    assert client.fetch_output(result) == PNG  # the client reads the frozen copy
    assert result.url is not None and "/frozen/" in result.url
    assert (result.state, result.miner, result.points) == (JobState.COMPLETED, miner.address, 8.0)


def test_a_completion_from_before_freezing_is_read_from_the_output_key(ledger: Ledger, catalog: Catalog,
                                                                      clock: Clock, object_store: ObjectStore,
                                                                      miner: Wallet, s3_settings: Settings,
                                                                      engine: Engine) -> None:
    job = image_job(ledger, catalog, clock)
    deliver(ledger, object_store, job, miner)
    with engine.begin() as conn:  # as a row accepted before migration 0011
        conn.execute(update(tables.CompletionRow).where(tables.CompletionRow.job_id == job.id)
                     .values(frozen_key=None, uploaded_at=None))
    view = ledger.reader.job(job.id)
    assert view is not None and view.stored_key == job.output_key
    client = Client(s3_settings, catalog=catalog, store=object_store, ledger=ledger.reader)
    assert client.fetch_output(client.to_result(view)) == PNG


class RacingStore(DelegatingStore):
    """The real store, but an attacker's PUT lands between the ledger's HEAD and its copy; with ``ignore_condition``
    the store also ignores ``CopySourceIfMatch`` (some S3-compatible services might)."""

    def __init__(self, inner: S3ObjectStore, ignore_condition: bool = False) -> None:
        super().__init__(inner)
        self.ignore_condition = ignore_condition

    def copy(self, source: str, dest: str, *, if_match: str) -> str | None:
        _attacker_put(self.inner, source, EVIL)
        if self.ignore_condition:
            info = self.inner.stat(source)
            assert info is not None and info.etag is not None
            if_match = info.etag
        return self.inner.copy(source, dest, if_match=if_match)


@pytest.mark.parametrize("ignore_condition", [False, True], ids=["condition", "store-ignores-condition"])
def test_an_overwrite_racing_the_freeze_is_never_frozen_nor_credited(ledger: Ledger, catalog: Catalog,
                                                                     clock: Clock, object_store: S3ObjectStore,
                                                                     miner: Wallet, ignore_condition: bool) -> None:
    job = image_job(ledger, catalog, clock)
    object_store.put(job.output_key, PNG, "image/png")
    ledger.store = RacingStore(object_store, ignore_condition)
    verdict = ledger.record_completion(sign(completion(job, miner, PNG), miner))
    assert (verdict.accepted, verdict.reason, verdict.state) == (False, Reason.OUTPUT_CHANGED, JobState.QUEUED)
    assert credited_entries(ledger.engine, job.id) == []
    if not ignore_condition:  # a failed condition copies nothing
        assert object_store.stat(frozen_key(job.output_key, sha(PNG))) is None
    view = ledger.reader.job(job.id)  # nothing recorded points at a copy: nobody reads one
    assert view is not None and view.frozen_key is None and view.output_sha256 is None


def test_freeze_copies_the_verified_bytes(object_store: S3ObjectStore) -> None:
    object_store.put("outputs/f.png", PNG, "image/png")
    info = object_store.stat("outputs/f.png")
    assert info is not None
    key = freeze(object_store, info, sha(PNG))
    assert key == frozen_key("outputs/f.png", sha(PNG)) and object_store.get(key) == PNG
    assert freeze(object_store, info, sha(PNG)) == key  # idempotent: a redelivery after a crash copies again


# ------------------------------------------------------------------------------------ the trusted clock


def test_lateness_is_the_store_upload_time_not_when_the_ledger_got_round_to_it(
        ledger: Ledger, catalog: Catalog, clock: Clock, object_store: ObjectStore, miner: Wallet) -> None:
    """A flood (or a stopped ledger) delays the completion an hour past the deadline; the output was stored in
    time, so the job is COMPLETED with its points."""
    job = image_job(ledger, catalog, clock, deadline_s=30)
    object_store.put(job.output_key, PNG, "image/png")
    clock.now += 3600  # the ledger processes the message an hour later
    verdict = ledger.record_completion(sign(completion(job, miner, PNG), miner))
    assert (verdict.accepted, verdict.state, verdict.points) == (True, JobState.COMPLETED, 8.0)
    row = _row(ledger, job.id)
    assert row.uploaded_at is not None and row.uploaded_at <= job.deadline_at < row.received_at
    assert [e.amount_micro for e in credited_entries(ledger.engine, job.id)] == [8_000_000]


def test_an_upload_after_the_deadline_is_late(ledger: Ledger, catalog: Catalog, clock: Clock,
                                              object_store: ObjectStore, miner: Wallet) -> None:
    """Even when the ledger's own clock says it is early: the store's upload time is what counts."""
    job = image_job(ledger, catalog, clock, deadline_s=-2)
    clock.now -= 60
    _, verdict = deliver(ledger, object_store, job, miner)
    assert (verdict.accepted, verdict.reason, verdict.state, verdict.points) == (True, Reason.LATE, JobState.LATE,
                                                                                 0.0)
    view = ledger.reader.job(job.id)
    assert view is not None and view.error is not None and "store's clock" in view.error
    assert view.frozen_key is not None and object_store.get(view.frozen_key) == PNG  # late output kept, frozen
    assert credited_entries(ledger.engine, job.id) == []


def test_the_second_granularity_gives_the_benefit_of_the_doubt(ledger: Ledger, catalog: Catalog, clock: Clock,
                                                               object_store: ObjectStore, miner: Wallet) -> None:
    """LastModified is floored to the second: an upload a fraction of a second after a deadline in the same second
    is on time (at most 1 s of grace); one in the next second is late. Only the PUT must land inside the second
    (the ledger may record later: the store's clock counts), so a loaded machine retries with a fresh job."""
    for _ in range(20):
        while not 0.1 < time.time() % 1 < 0.3:  # start early in a second, so the upload stays inside it
            time.sleep(0.02)
        second = math.floor(time.time())
        clock.now = second - 60.0
        job = image_job(ledger, catalog, clock, deadline_s=60.05)  # deadline: second + 0.05, already past
        object_store.put(job.output_key, PNG, "image/png")
        if time.time() < second + 1:
            break
    else:
        pytest.fail("no upload landed inside its second in 20 tries: the store is too slow for this test")
    verdict = ledger.record_completion(sign(completion(job, miner, PNG), miner))
    assert (verdict.state, verdict.points) == (JobState.COMPLETED, 8.0)
    assert _row(ledger, job.id).uploaded_at == second
    late = image_job(ledger, catalog, clock, deadline_s=59.95)  # deadline: second - 0.05
    assert deliver(ledger, object_store, late, miner)[1].state is JobState.LATE


def test_an_overdue_job_is_failed_not_sent_again(ledger: Ledger, catalog: Catalog, clock: Clock,
                                                 s3_settings: Settings) -> None:
    """Redispatch cannot make a URL that outlives the deadline, so an overdue job ends FAILED with the reason."""
    job = image_job(ledger, catalog, clock, deadline_s=0.5)
    assert not redispatch(Celery(set_as_current=False), ledger, s3_settings, job.id)
    view = ledger.reader.job(job.id)
    assert view is not None and view.state is JobState.FAILED and "deadline passed" in (view.error or "")


def _row(ledger: Ledger, job_id: str) -> tables.CompletionRow:
    with session_scope(ledger.engine) as session:
        row = session.get(tables.CompletionRow, job_id)
        assert row is not None
        session.expunge(row)
        return row
