"""Pushed verdicts (``heurist.verdicts``) on RabbitMQ, with the ledger on SQLite and PostgreSQL: a verdict wakes the
waiting client (the fallback poll is set to a minute, so nothing else could) and hands it the job as committed,
sealed, so it reads nothing more; a lost notice is found by the fallback poll, a forged notice changes nothing,
the gateway's wait wakes the same way, and ``submit_many`` records its jobs in one INSERT and publishes them all."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from amqp.exceptions import NotFound, ResourceLocked
from fastapi.testclient import TestClient
from kombu import Connection, Producer
from sqlalchemy import Engine, event, select, update
from sqlalchemy.orm import Session

from heurist.catalog import JobKind
from heurist.celery_app import create_app
from heurist.client import Client, ImageRequest, TextRequest
from heurist.credits.ledger import CreditLedger
from heurist.db.engine import make_engine
from heurist.dispatch import JobsNotSentError
from heurist.embedded import wait_until
from heurist.errors import JobTimeoutError
from heurist.gateway.app import create_app as create_gateway
from heurist.identity import Wallet
from heurist.jobs import JobState
from heurist.ledger.middleware import Accepted, LedgerMiddleware
from heurist.ledger.reader import JobView, LedgerReader
from heurist.ledger.service import Ledger
from heurist.ledger.tables import Job
from heurist.outbox import OutboxEntry, OutboxRelay, put
from heurist.settings import Settings
from heurist.storage.backend import ObjectStore
from heurist.verdicts import EXCHANGE, VerdictNotice
from heurist.verdicts.notice import MAX_NOTICE_BYTES, new_notify_key, opened, routing_key, sealed
from heurist.verdicts.publisher import VerdictPublisher, install_verdicts
from tests.fixtures.broker import ready
from tests.fixtures.ledger import Clock, deliver, image_job
from tests.fixtures.ledger import Job as LedgerJob

TINY = ImageRequest("a kite", "tiny-sd", width=64, height=64, steps=2, seed=1)
TINY_KIND = JobKind.IMAGE


def _settings(tmp_path: Path, rabbit_url: str, **overrides: Any) -> Settings:
    # Polling as slow as allowed (5 s) and a one-minute fallback: a wait that ends within a second was woken.
    values: dict[str, Any] = {"result_poll_interval_s": 5.0, "verdict_fallback_poll_s": 60.0, **overrides}
    return Settings(_env_file=None, broker_url=rabbit_url, data_dir=tmp_path / "heurist", **values)  # type: ignore[call-arg]


@pytest.fixture
def settings(tmp_path: Path, rabbit_url: str) -> Settings:
    return _settings(tmp_path, rabbit_url)


@pytest.fixture
def client(settings: Settings, ledger: Ledger, object_store: ObjectStore) -> Iterator[Client]:
    with Client(settings, catalog=ledger.catalog, store=object_store, ledger=ledger.reader) as c:
        yield c


@pytest.fixture
def publisher(settings: Settings, ledger: Ledger) -> Iterator[VerdictPublisher]:
    """The ledger's verdict publisher, installed as ``heurist ledger`` installs it."""
    app = create_app(settings)
    installed = install_verdicts(app, settings, ledger)
    assert installed is not None
    yield installed
    installed.close()
    app.close()


def _later(delay_s: float, action: Callable[[], object]) -> threading.Thread:
    def run() -> None:
        time.sleep(delay_s)
        action()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _timed_wait(client: Client, job_id: str, timeout: float) -> tuple[float, JobState]:
    started = time.monotonic()
    [view] = client.wait_all([job_id], timeout)
    return time.monotonic() - started, view.state


def test_a_credit_wakes_the_waiting_client(client: Client, ledger: Ledger, object_store: ObjectStore,
                                           miner: Wallet, publisher: VerdictPublisher) -> None:
    handle = client.submit(TINY)
    view = ledger.reader.job(handle.id)
    assert view is not None and view.notify_key == client.verdicts.key  # type: ignore[union-attr]
    job = LedgerJob(handle.id, handle.spec, ledger.reader.job_params(handle.id), handle.output_key,  # type: ignore[arg-type]
                    view.deadline_at)
    _later(0.3, lambda: deliver(ledger, object_store, job, miner))
    elapsed, state = _timed_wait(client, handle.id, timeout=20)
    assert state is JobState.COMPLETED
    assert elapsed < 2.0, f"woken after {elapsed:.2f}s: not by the notice (fallback poll 60 s, poll 5 s)"
    assert client.verdicts.received >= 1  # type: ignore[union-attr]
    # The publisher counts a batch once it is handed over: the notice may reach the client before that.
    wait_until(lambda: publisher.published >= 1, 5, "the publisher to count its notice", interval=0.05)


def _counting_reads(client: Client) -> list[list[str]]:
    """Every read of the ledger the client's waits make, as the job ids each asked for."""
    reads: list[list[str]] = []
    real = client._read

    def read(job_ids: list[str]) -> list[JobView]:
        reads.append(list(job_ids))
        return real(job_ids)

    client._read = read  # type: ignore[method-assign]
    return reads


@pytest.mark.parametrize("late", [False, True], ids=["credited", "late"])
def test_the_notice_hands_the_client_its_view_and_it_reads_nothing(client: Client, ledger: Ledger,
                                                                   object_store: ObjectStore, miner: Wallet,
                                                                   publisher: VerdictPublisher,
                                                                   late: bool) -> None:
    """The wait reads its job once when it starts; the notice then brings the job as the ledger committed it, which
    is exactly what a read of the row returns now, so it is not read again."""
    handle = client.submit(TINY)
    view = ledger.reader.job(handle.id)
    assert view is not None
    deadline = time.time() - 2 if late else view.deadline_at  # the store's upload time is then past it
    if late:
        with ledger.engine.begin() as conn:
            conn.execute(update(Job).where(Job.id == handle.id).values(deadline_at=deadline))
    job = LedgerJob(handle.id, handle.spec, ledger.reader.job_params(handle.id), handle.output_key,  # type: ignore[arg-type]
                    deadline)
    assert client.verdicts is not None and client.verdicts.start(wait_s=10).connected  # (a connect reads all again)
    reads = _counting_reads(client)
    _later(0.3, lambda: deliver(ledger, object_store, job, miner))
    started = time.monotonic()
    [got] = client.wait_all([handle.id], 20)
    elapsed = time.monotonic() - started
    assert got.state is (JobState.LATE if late else JobState.COMPLETED) and elapsed < 2.0
    assert reads == [[handle.id]]  # the wait's first read, made before the credit
    assert got == ledger.reader.job(handle.id)  # what the notice brought is the row


@pytest.mark.parametrize("batched", [False, True], ids=["alone", "batched"])
def test_a_credits_view_is_what_a_read_returns(ledger: Ledger, object_store: ObjectStore, miner: Wallet,
                                               clock: Clock, batched: bool) -> None:
    """``Ledger._credited`` describes the job without reading it: for a credit, an escrowed credit and a late one,
    alone and batched, the view equals the row read after the commit, field for field."""
    if batched:
        ledger.batch(8, 0.0)
    ledger.escrow_new_miners = True
    for deadline_s in (60.0, -2.0):  # credited (escrowed: a new miner), then late (no points)
        job = image_job(ledger, ledger.catalog, clock, model="tiny-sd", width=64, height=64, steps=2,
                        deadline_s=deadline_s)
        _, verdict = deliver(ledger, object_store, job, miner)
        assert verdict.accepted and verdict.view is not None
        assert verdict.view == ledger.reader.job(job.id)
        assert (verdict.view.points_micro > 0) is (deadline_s > 0)


def test_only_a_notice_sealed_with_the_clients_key_is_opened() -> None:
    key = new_notify_key()
    view = JobView(job_id="j1", model_id="tiny-sd", kind=TINY_KIND, state=JobState.COMPLETED, output_key="o.png",
                   points_micro=8_000_000, miner="0xabc", output_sha256="00" * 32, input_tokens=0, output_tokens=0,
                   error=None, created_at=1.0, deadline_at=9.0, finished_at=2.0, frozen_key="f.png", notify_key=key)
    notice = sealed(key, view)
    assert key not in notice.model_dump_json()  # the key never travels
    assert opened(VerdictNotice.model_validate_json(notice.model_dump_json()), key) == view
    assert opened(notice, new_notify_key()) is None  # another client's key
    assert opened(sealed(routing_key(key), view), key) is None  # sealed with what the broker knows of the key
    richer = notice.model_copy(update={"view": notice.view.replace("8000000", "9000000")})  # type: ignore[union-attr]
    assert opened(richer, key) is None  # a changed view
    assert opened(notice.model_copy(update={"job_id": "j2"}), key) is None  # moved to another job
    assert opened(notice.model_copy(update={"state": JobState.FAILED}), key) is None  # another state
    assert opened(VerdictNotice(job_id="j1", state=JobState.COMPLETED), key) is None  # a wake-up only
    assert opened(sealed(key, replace(view, state=JobState.QUEUED)), key) is None  # not ended


def test_a_notice_too_big_for_its_view_still_wakes_the_wait(client: Client, ledger: Ledger,
                                                          publisher: VerdictPublisher) -> None:
    """An error of 1,000 newlines is 2 KB of view but 4 KB once the view is escaped inside the notice: the notice
    goes without its view (under the listener's limit) and the wait, woken, reads the row."""
    error = "\n" * 1000
    handle = client.submit(TINY)
    assert client.verdicts is not None and client.verdicts.start(wait_s=10).connected
    reads = _counting_reads(client)
    _later(0.3, lambda: ledger.record_failure(handle.id, error))
    elapsed, state = _timed_wait(client, handle.id, timeout=20)
    assert state is JobState.FAILED and elapsed < 2.0, f"{state} after {elapsed:.2f}s: the notice was dropped"
    assert len(reads) == 2  # its first read, then the notified row
    view = ledger.reader.job(handle.id)
    assert view is not None and view.error == error
    notice = sealed(client.verdicts.key, view)
    assert notice.view is None and len(notice.model_dump_json()) <= MAX_NOTICE_BYTES


class Sampled(LedgerMiddleware):
    """Every credit decides an outbox message (as the audit's sampling does), committed with it."""

    def within_accept(self, session: Session, accepted: Accepted) -> None:
        put(session, f"test:{accepted.job_id}", "test.sampled", "test-sampled", [accepted.job_id], accepted.at)
        accepted.outbox_keys.append(f"test:{accepted.job_id}")


def test_a_credits_notice_goes_first_and_reads_nothing(client: Client, ledger: Ledger, object_store: ObjectStore,
                                                       miner: Wallet, publisher: VerdictPublisher) -> None:
    """The notice of a credit is built from what the ledger just committed: it reaches the client while the
    outbox's publish after the same credit is still held, and while the publisher cannot read the database."""
    held, release = threading.Event(), threading.Event()

    def stuck(entry: OutboxEntry) -> None:
        held.set()
        assert release.wait(30)

    ledger.outbox = OutboxRelay(ledger.engine, stuck)
    ledger.middleware.insert(0, Sampled())
    publisher.reader = LedgerReader(make_engine("postgresql+psycopg://nobody@127.0.0.1:1/none"))
    handle = client.submit(TINY)
    view = ledger.reader.job(handle.id)
    assert view is not None
    job = LedgerJob(handle.id, handle.spec, ledger.reader.job_params(handle.id), handle.output_key,  # type: ignore[arg-type]
                    view.deadline_at)
    delivery = _later(0.3, lambda: deliver(ledger, object_store, job, miner))
    try:
        elapsed, state = _timed_wait(client, handle.id, timeout=20)
        assert state is JobState.COMPLETED and elapsed < 2.0, f"{state} after {elapsed:.2f}s: not by the notice"
        assert held.wait(5) and delivery.is_alive()  # the outbox's publish after it was (or is about to be) held
    finally:
        release.set()
        delivery.join(30)


def test_a_failure_ended_by_the_trusted_side_wakes_it_too(client: Client, ledger: Ledger,
                                                          publisher: VerdictPublisher) -> None:
    """Its notices are read by the publisher as a client would read the rows, and sealed: nothing is read again."""
    handles = client.submit_many([TINY, TINY])
    assert client.verdicts is not None and client.verdicts.start(wait_s=10).connected
    reads = _counting_reads(client)
    _later(0.3, lambda: [ledger.record_failure(h.id, "an operator ended it") for h in handles])
    started = time.monotonic()
    views = client.wait_all([h.id for h in handles], 20)
    assert [v.state for v in views] == [JobState.FAILED, JobState.FAILED]
    assert time.monotonic() - started < 2.0
    assert reads == [[h.id for h in handles]]
    assert views == [ledger.reader.job(h.id) for h in handles]


def test_a_lost_notice_is_found_by_the_fallback_poll(tmp_path: Path, rabbit_url: str, ledger: Ledger,
                                                     object_store: ObjectStore) -> None:
    """No publisher: every notice is lost. The wait finds the verdict at its fallback poll (or its last read, at
    its timeout), not sooner."""
    for fallback_s, timeout, found_after in ((0.8, 20.0, 0.8), (60.0, 2.0, 2.0)):
        settings = _settings(tmp_path, rabbit_url, verdict_fallback_poll_s=fallback_s)
        with Client(settings, catalog=ledger.catalog, store=object_store, ledger=ledger.reader) as client:
            handle = client.submit(TINY)
            _later(0.2, lambda h=handle: ledger.record_failure(h.id, "gone"))  # type: ignore[misc]
            elapsed, state = _timed_wait(client, handle.id, timeout)
            assert state is JobState.FAILED and found_after - 0.1 <= elapsed < found_after + 1.5
            assert client.verdicts.received == 0  # type: ignore[union-attr]


def test_jobs_of_another_client_are_polled(client: Client, ledger: Ledger, tmp_path: Path, rabbit_url: str,
                                           object_store: ObjectStore) -> None:
    """A job this client did not submit sends its notices elsewhere: the wait polls for it."""
    settings = _settings(tmp_path, rabbit_url, result_poll_interval_s=0.1)
    with Client(settings, catalog=ledger.catalog, store=object_store, ledger=ledger.reader) as other:
        handle = client.submit(TINY)
        _later(0.2, lambda: ledger.record_failure(handle.id, "gone"))
        elapsed, state = _timed_wait(other, handle.id, timeout=20)
    assert state is JobState.FAILED and elapsed < 2.0


def test_a_forged_notice_changes_nothing(client: Client, settings: Settings) -> None:
    """Even from a publisher the broker lets through (here the trusted user) and who knows the queue's routing key,
    a notice without a view sealed under the client's notify key only wakes the wait: the row says QUEUED, so the
    job is still waited for."""
    handle = client.submit(TINY)
    listener = client.verdicts
    assert listener is not None
    route = routing_key(listener.key)
    queued = client.ledger.job(handle.id)
    assert queued is not None
    view = replace(queued, state=JobState.COMPLETED, miner="0xevil", points_micro=10**12)
    forged = [VerdictNotice(job_id=handle.id, state=JobState.COMPLETED), sealed(route, view),
              sealed(new_notify_key(), view)]

    def forge() -> None:
        with Connection(settings.resolved_broker_url()) as conn:
            for notice in forged:
                Producer(conn.channel()).publish(notice.model_dump_json(), exchange=EXCHANGE, routing_key=route,
                                                 content_type="application/json", retry=False)

    _later(0.2, forge)
    with pytest.raises(JobTimeoutError):
        client.wait_all([handle.id], 1.5)
    assert listener.received == len(forged)


def test_submit_many_records_every_job_in_one_insert(client: Client, ledger: Ledger, engine: Engine) -> None:
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO JOBS"):
            statements.append(statement)

    requests = [TextRequest(f"hello {i}", "smollm2-135m", max_tokens=4, seed=i) for i in range(20)]
    queue = client.catalog["smollm2-135m"].queue
    before = ready(client, queue)  # the vhost is the module's: the other database's run left its own
    event.listen(engine, "before_cursor_execute", record)
    try:
        handles = client.submit_many(requests)
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert len(statements) == 1 and len(handles) == 20
    with engine.connect() as conn:
        rows = conn.execute(select(Job.id, Job.state, Job.notify_key).where(Job.id.in_([h.id for h in handles])))
        assert {(r.state, r.notify_key) for r in rows} == {(JobState.QUEUED, client.verdicts.key)}  # type: ignore[union-attr]
    assert ready(client, queue) - before == 20  # every message is on the broker, confirmed



def test_submit_many_fails_the_jobs_the_broker_never_had(tmp_path: Path, ledger: Ledger,
                                                         object_store: ObjectStore) -> None:
    settings = _settings(tmp_path, "amqp://guest:guest@127.0.0.1:1//", broker_publish_timeout_s=0)
    with (Client(settings, catalog=ledger.catalog, store=object_store, ledger=ledger.reader) as client,
          pytest.raises(JobsNotSentError) as err):
        client.submit_many([TINY, TINY, TINY])
    assert len(err.value.job_ids) == 3
    views = ledger.reader.jobs(list(err.value.job_ids))
    assert [v.state for v in views] == [JobState.FAILED] * 3 and {v.error for v in views} == {
        "could not enqueue: broker unreachable"}


def test_the_gateway_wait_wakes_on_the_notice(client: Client, settings: Settings, ledger: Ledger,
                                              publisher: VerdictPublisher) -> None:
    credits = CreditLedger(ledger.engine)
    _, key = credits.create_key("verdicts", 10.0)
    api = TestClient(create_gateway(settings, client, credits))

    def fail_the_job() -> None:
        for _ in range(100):
            queued = ledger.reader.recent_jobs(1, JobState.QUEUED)
            if queued:
                ledger.record_failure(queued[0].job_id, "an operator ended it")
                return
            time.sleep(0.05)

    _later(0.2, fail_the_job)
    started = time.monotonic()
    resp = api.post("/v1/images/generations", headers={"Authorization": f"Bearer {key}"},
                    json={"prompt": "a kite", "model": "tiny-sd", "width": 64, "height": 64, "steps": 2,
                          "timeout_s": 30})
    assert resp.status_code == 502 and "refunded" in resp.json()["error"]["message"]
    assert time.monotonic() - started < 3.0


def test_the_queue_goes_with_the_client(settings: Settings, ledger: Ledger, object_store: ObjectStore) -> None:
    with Client(settings, catalog=ledger.catalog, store=object_store, ledger=ledger.reader) as client:
        listener = client.verdicts
        assert listener is not None and listener.start(wait_s=10).connected and listener.queue is not None
        # Exclusive: another connection, even the trusted user's, may not even look at it.
        with Connection(settings.resolved_broker_url()) as conn, pytest.raises(ResourceLocked):
            conn.channel().queue_declare(listener.queue, passive=True)
    assert not listener.connected
    with Connection(settings.resolved_broker_url()) as conn, pytest.raises(NotFound):
        conn.channel().queue_declare(listener.queue, passive=True)
