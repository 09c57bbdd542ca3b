"""``heurist.dispatch.send_jobs``: many signed jobs published with one confirm wait (RabbitMQ), or one INSERT each
(the embedded broker); the broker's acks and nacks mapped back to the jobs, whichever of them it settles first."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from amqp.exceptions import NotFound
from celery import Celery

from heurist.catalog import load_catalog
from heurist.celery_app import create_app
from heurist.dispatch import _Confirms, dispatch_signer, job_message, send_jobs
from heurist.jobs import SignedJob, TextParams
from heurist.settings import Settings
from heurist.storage.backend import ObjectStore

QUEUE = "vram8.smollm2-135m"


def _signed(settings: Settings, store: ObjectStore, n: int) -> list[tuple[SignedJob, str]]:
    signer = dispatch_signer(settings)
    jobs = []
    for i in range(n):
        job_id = str(uuid.uuid4())
        message = job_message(job_id, "smollm2-135m", TextParams(prompt=f"hi {i}", max_tokens=4),
                              f"outputs/smollm2-135m/{job_id}.json", time.time() + 600, store, 600)
        jobs.append((signer.sign(message), QUEUE))
    return jobs


def _ready(app: Celery) -> int:
    with app.connection_for_write() as conn:
        try:
            return int(conn.channel().queue_declare(QUEUE, passive=True).message_count)
        except NotFound:
            return 0


def test_a_batch_is_on_rabbitmq_once_send_jobs_returns(rabbit_url: str, tmp_path: Path,
                                                       object_store: ObjectStore) -> None:
    settings = Settings(_env_file=None, broker_url=rabbit_url, data_dir=tmp_path)  # type: ignore[call-arg]
    app = create_app(settings)
    try:
        before = _ready(app)
        send_jobs(app, _signed(settings, object_store, 40))
        assert _ready(app) - before == 40
        send_jobs(app, [])  # nothing to send: no connection, no error
    finally:
        app.close()


def test_the_embedded_broker_takes_a_batch_too(tmp_path: Path, object_store: ObjectStore) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path)  # type: ignore[call-arg]
    app = create_app(settings)
    try:
        send_jobs(app, _signed(settings, object_store, 5))
        assert _ready(app) == 5
    finally:
        app.close()
    assert load_catalog()["smollm2-135m"].queue == QUEUE


def test_acks_and_nacks_settle_each_tag_once() -> None:
    confirms = _Confirms(published=6)
    confirms.ack(2, False)
    assert confirms.floor == 1 and confirms.acked(2) and not confirms.done()
    confirms.nack(3, True)  # tags 1 and 3 refused; 2 was acked already and stays so
    assert (confirms.acked(1), confirms.acked(2), confirms.acked(3)) == (False, True, False)
    assert confirms.floor == 4
    confirms.ack(6, True)
    assert confirms.done() and all(confirms.acked(t) for t in (4, 5, 6)) and not confirms.acked(0)
