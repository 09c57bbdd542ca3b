"""Audit samples survive crashes (issue 14, item 7): the sampling decision commits with the credit, as an outbox
row, and the relay publishes it to the audit queue even when the ledger died before its fast path, or the broker
refused it. On SQLite and PostgreSQL, with a real RabbitMQ (through a proxy the test can cut)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from celery import Celery
from sqlalchemy import Engine, select

from heurist.audit.middleware import AuditSampling, MetricsFlagging, audit_key, audit_queue
from heurist.audit.sampler import AuditSampler
from heurist.catalog import Catalog
from heurist.celery_app import create_app
from heurist.db.engine import session_scope
from heurist.identity import Wallet
from heurist.jobs import JobState
from heurist.ledger.middleware import Accepted, LedgerMiddleware
from heurist.ledger.service import Ledger
from heurist.outbox import OutboxEntry, OutboxRelay
from heurist.outbox.relay import celery_publish
from heurist.settings import Settings
from heurist.storage.backend import ObjectStore
from tests.fixtures.ledger import Clock, credited_entries, deliver, image_job
from tests.fixtures.proxy import TcpProxy

ALWAYS = AuditSampler(base_rate=1.0, new_miner_rate=1.0, suspicious_rate=1.0, seed=1)
QUEUE = audit_queue("audit", "sd15")


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    with TcpProxy(5672) as p:
        yield p


@pytest.fixture
def app(rabbit_url: str, proxy: TcpProxy) -> Iterator[Celery]:
    # A publish behind the downed proxy gives up after 2 s, not the default 30 (the test only needs it to fail).
    celery = create_app(Settings(_env_file=None, broker_url=proxy.url_for(rabbit_url),  # type: ignore[call-arg]
                                 broker_publish_timeout_s=2.0))
    with celery.connection_for_write() as conn:  # a fresh queue per test: a module's vhost is shared
        conn.default_channel.queue_delete(QUEUE)
        conn.default_channel.queue_declare(QUEUE, durable=True, auto_delete=False)
    yield celery
    celery.close()


def _queued(app: Celery) -> list[str]:
    """The job ids waiting in the audit queue (consumed: each test reads its queue once)."""
    ids = []
    with app.connection_for_write() as conn:
        queue = conn.SimpleQueue(QUEUE)
        while True:
            try:
                message = queue.get(block=True, timeout=0.5)
            except queue.Empty:
                break
            ids.append(message.payload[0][0])  # Celery protocol 2: (args, kwargs, embed)
            message.ack()
        queue.close()
    return ids


def _rows(engine: Engine) -> list[OutboxEntry]:
    with session_scope(engine) as session:
        return list(session.scalars(select(OutboxEntry).order_by(OutboxEntry.id)))


def _sampling(ledger: Ledger) -> Ledger:
    ledger.middleware = [MetricsFlagging(), AuditSampling(ALWAYS)]
    return ledger


def test_a_sample_commits_with_its_credit_and_a_later_relay_publishes_it(
        ledger: Ledger, engine: Engine, catalog: Catalog, clock: Clock, object_store: ObjectStore, miner: Wallet,
        app: Celery) -> None:
    """The ledger dies right after the commit (here: it has no relay, so no fast path ran): the sample is in the
    outbox, and the next ledger's drain publishes it once."""
    job = image_job(_sampling(ledger), catalog, clock)
    _, verdict = deliver(ledger, object_store, job, miner)
    assert verdict.accepted
    [row] = _rows(engine)
    assert (row.key, row.queue, row.args, row.sent_at) == (audit_key(job.id), QUEUE, [job.id], None)
    relay = OutboxRelay(engine, celery_publish(app))
    assert relay.pending() == 1
    assert relay.drain() == 1 and relay.drain() == 0
    assert _queued(app) == [job.id]
    [row] = _rows(engine)
    assert row.sent_at is not None and row.attempts == 1 and relay.pending() == 0


def test_the_fast_path_publishes_at_once(ledger: Ledger, engine: Engine, catalog: Catalog, clock: Clock,
                                         object_store: ObjectStore, miner: Wallet, app: Celery) -> None:
    _sampling(ledger).outbox = OutboxRelay(engine, celery_publish(app))
    jobs = [image_job(ledger, catalog, clock) for _ in range(3)]
    for job in jobs:
        deliver(ledger, object_store, job, miner)
    assert sorted(_queued(app)) == sorted(j.id for j in jobs)
    assert all(row.sent_at is not None for row in _rows(engine))


class Crash(LedgerMiddleware):
    """Raises inside the credit's transaction, as a ledger dying mid-commit would leave it: nothing."""

    def within_accept(self, session: object, accepted: Accepted) -> None:
        raise RuntimeError("the ledger died mid-commit")


def test_credit_and_sample_commit_together_or_not_at_all(ledger: Ledger, engine: Engine, catalog: Catalog,
                                                        clock: Clock, object_store: ObjectStore,
                                                        miner: Wallet) -> None:
    job = image_job(_sampling(ledger), catalog, clock)
    ledger.middleware.append(Crash())
    with pytest.raises(RuntimeError):
        deliver(ledger, object_store, job, miner)
    assert credited_entries(engine, job.id) == [] and _rows(engine) == []
    assert ledger.reader.job(job.id).state is JobState.QUEUED  # type: ignore[union-attr]
    ledger.middleware.pop()  # the redelivery of the same completion credits it, and samples it, once
    _, verdict = deliver(ledger, object_store, job, miner)
    assert verdict.accepted and len(credited_entries(engine, job.id)) == 1 and len(_rows(engine)) == 1
    _, again = deliver(ledger, object_store, job, miner)
    assert again.duplicate and len(_rows(engine)) == 1


def test_a_refused_publish_frees_the_row_for_the_next_round(ledger: Ledger, engine: Engine, catalog: Catalog,
                                                            clock: Clock, object_store: ObjectStore, miner: Wallet,
                                                            app: Celery, proxy: TcpProxy) -> None:
    _sampling(ledger).outbox = OutboxRelay(engine, celery_publish(app))
    proxy.down()  # the broker is unreachable: the fast path fails, the credit stands
    app.conf.broker_connection_timeout = 1
    app.conf.task_publish_retry_policy = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2}
    job = image_job(ledger, catalog, clock)
    _, verdict = deliver(ledger, object_store, job, miner)
    assert verdict.accepted
    [row] = _rows(engine)
    assert row.sent_at is None and row.lease_until is None and row.attempts == 1
    proxy.up()
    assert ledger.outbox.drain() == 1  # type: ignore[union-attr]
    assert _queued(app) == [job.id]


def test_two_relays_publish_each_row_once(ledger: Ledger, engine: Engine, catalog: Catalog, clock: Clock,
                                         object_store: ObjectStore, miner: Wallet, app: Celery) -> None:
    """Two ledger processes drain the same outbox at once: leases give each row to one of them."""
    jobs = [image_job(_sampling(ledger), catalog, clock) for _ in range(40)]
    for job in jobs:
        deliver(ledger, object_store, job, miner)
    relays = [OutboxRelay(engine, celery_publish(app)) for _ in range(2)]
    sent = [0, 0]

    def drain(i: int) -> None:
        sent[i] = relays[i].drain()

    threads = [threading.Thread(target=drain, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(sent) == len(jobs)
    assert sorted(_queued(app)) == sorted(j.id for j in jobs)
