"""A job a banned miner took goes back to its queue (real RabbitMQ, SeaweedFS, SQLite ledger)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery
from kombu import Connection

from heurist.catalog import Catalog, load_catalog
from heurist.celery_app import create_app
from heurist.db.engine import make_engine
from heurist.db.migrate import upgrade
from heurist.dispatch import dispatch_signer
from heurist.identity import Wallet
from heurist.jobs import JobMessage, JobState, SignedJob, TextParams
from heurist.ledger.audit_service import AuditLedger
from heurist.ledger.redispatch import MAX_BANNED_ATTEMPTS, redispatch
from heurist.ledger.service import Ledger
from heurist.ledger.tables import Reason
from heurist.settings import Settings
from heurist.signing import job_signer
from heurist.storage.backend import ObjectStore
from tests.fixtures.ledger import Job, completion, register, sign

MODEL = "smollm2-135m"


@pytest.fixture()
def ledger(sqlite_url: str, object_store: ObjectStore) -> Iterator[Ledger]:
    upgrade(sqlite_url)
    engine = make_engine(sqlite_url)
    yield Ledger(engine, load_catalog(), object_store)
    engine.dispose()


@pytest.fixture()
def app(rabbit_url: str, tmp_path: Path) -> Iterator[Celery]:
    app = create_app(Settings(_env_file=None, broker_url=rabbit_url, data_dir=tmp_path))  # type: ignore[call-arg]
    yield app
    app.close()


def queued_messages(app: Celery, queue: str, settings: Settings | None = None) -> list[JobMessage]:
    """Drain ``queue``: the job messages Celery published to it, each signed by ``settings``' dispatch key and
    carrying no callbacks (the miner reports to the ledger itself)."""
    found = []
    with Connection(app.conf.broker_url) as conn:
        channel = conn.default_channel
        while (raw := channel.basic_get(queue=queue, no_ack=True)) is not None:
            args, _, embed = json.loads(raw.body)
            signed = SignedJob.model_validate(args[0])
            if settings is not None:
                assert job_signer(signed) == dispatch_signer(settings).address
            assert not embed.get("callbacks") and not embed.get("errbacks")
            found.append(signed.job)
    return found


def banned_miner(ledger: Ledger) -> Wallet:
    wallet = Wallet.create()
    assert register(ledger, wallet).accepted
    AuditLedger(ledger.engine).ban(wallet.address, "test: failed audits")
    return wallet


def deliver_banned(ledger: Ledger, store: ObjectStore, job_id: str, key: str, wallet: Wallet) -> None:
    store.put(key, b'{"text": "x"}', "application/json")
    job = Job(job_id, ledger.catalog[MODEL], TextParams(prompt="p", max_tokens=8), key, time.time() + 600)
    verdict = ledger.record_completion(sign(completion(job, wallet, b'{"text": "x"}'), wallet))
    assert (verdict.accepted, verdict.reason, verdict.state) == (False, Reason.BANNED, JobState.QUEUED)


def test_a_job_a_banned_miner_took_is_sent_again_then_failed_after_three(
        ledger: Ledger, object_store: ObjectStore, app: Celery, tmp_path: Path) -> None:
    catalog: Catalog = ledger.catalog
    spec = catalog[MODEL]
    params = TextParams(prompt="Name three colors.", max_tokens=8)
    job_id, key = str(uuid.uuid4()), f"outputs/{MODEL}/{uuid.uuid4()}.json"
    ledger.book.create_job(job_id, spec, params, key, spec.queue, time.time() + 600)
    settings = Settings(_env_file=None, data_dir=tmp_path)  # type: ignore[call-arg]
    for attempt in range(1, MAX_BANNED_ATTEMPTS + 1):
        deliver_banned(ledger, object_store, job_id, key, banned_miner(ledger))
        sent = redispatch(app, ledger, settings, job_id)
        if attempt < MAX_BANNED_ATTEMPTS:
            assert sent
            [message] = queued_messages(app, spec.queue, settings)
            assert (message.job_id, message.params, message.model_id) == (job_id, params, MODEL)
            assert key in message.output_url  # the same output key, a fresh presigned URL
    assert not sent and queued_messages(app, spec.queue) == []
    view = ledger.reader.job(job_id)
    assert view is not None and view.state is JobState.FAILED and "banned miners" in (view.error or "")
