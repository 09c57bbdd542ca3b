"""Pushed verdicts (``heurist.verdicts``) against a miner with raw AMQP on its own restricted broker user.

A client waits on an exclusive queue bound to ``heurist.verdicts`` with a hash of its secret notify key; the
ledger publishes a ``VerdictNotice`` there when a job ends, carrying the job as committed, sealed with an HMAC
under the notify key, which the client then believes without reading the row. An attacker would like to make a
victim's wait end early ("completed", with points and its own address) with a forged notice, to hear which jobs
end when, or to steal notices from the victim's queue. The miner's user has no configure right, writes only its
inbox and ``heurist.stream``, and reads only tier queues (``heurist.access.permissions``), so the broker refuses
each attempt with ACCESS_REFUSED, even with the victim's routing key in hand. A notice that did get through
(published here with the trusted side's user, standing in for a broker that lets it through) is not believed:
its view is sealed with what the attacker knows (the routing key), not the notify key, so it only wakes the
wait, the job row says QUEUED, and the client keeps waiting. The honest job still ends with its verdict, brought
by the ledger's notice, credited to the honest miner only.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from amqp.exceptions import AccessRefused
from kombu import Connection, Producer

from heurist.access import MinerCredentials
from heurist.client import Client, ImageRequest
from heurist.errors import JobTimeoutError
from heurist.jobs import JobState
from heurist.submission import text_params
from heurist.verdicts import EXCHANGE, EXCHANGE_NAME, VerdictNotice
from heurist.verdicts.notice import routing_key, sealed
from tests.adversary.raw import Attacker

# Each module starts its own network (about 1-4 min here): run by `make test-slow`, and so by CI.
pytestmark = pytest.mark.slow

TIER = "vram8.tiny-sd"


def _refused(creds: MinerCredentials, operation: Callable[[Any], object]) -> None:
    """``operation`` on a fresh channel of the attacker's connection is refused by the broker (403)."""
    with Connection(creds.broker_url, transport_options={"confirm_publish": True}) as conn:
        channel = conn.channel()
        with pytest.raises(AccessRefused) as refused:
            operation(channel)
            channel.basic_qos(0, 1, False)  # a refused publish surfaces on the next synchronous call
        assert refused.value.reply_code == 403


def _forged(client: Client, job_id: str, attacker: str = "0x" + "e" * 40) -> str:
    """A notice that says the job completed, for a fortune, by ``attacker``: sealed with the routing key, which is
    all of the notify key the broker ever sees."""
    view = client.ledger.job(job_id)
    assert view is not None and client.verdicts is not None
    claimed = replace(view, state=JobState.COMPLETED, miner=attacker, points_micro=10**15)
    return sealed(routing_key(client.verdicts.key), claimed).model_dump_json()


def _queued_job(client: Client) -> str:
    """A job nobody serves (the honest miner serves tiny-sd only): it stays QUEUED whatever anyone says."""
    spec = client.catalog["smollm2-135m"]
    return client.submit_params(spec, text_params(spec, "Name three colors.", max_tokens=4)).id


def test_a_miner_cannot_publish_a_verdict_notice(client: Client, attacker: Attacker) -> None:
    job_id = _queued_job(client)
    key = routing_key(client.verdicts.key)  # type: ignore[union-attr]  # the attacker is even given the route
    _refused(attacker.creds, lambda ch: Producer(ch).publish(_forged(client, job_id), exchange=EXCHANGE_NAME,
                                                             routing_key=key, retry=False))
    queue = client.verdicts.start(wait_s=10).queue  # type: ignore[union-attr]
    _refused(attacker.creds, lambda ch: Producer(ch).publish(_forged(client, job_id), exchange="",  # amq.default
                                                             routing_key=queue, retry=False))
    with pytest.raises(JobTimeoutError):
        client.wait_all([job_id], 1.0)


def test_a_miner_cannot_listen_to_verdicts(client: Client, attacker: Attacker) -> None:
    listener = client.verdicts
    assert listener is not None and listener.start(wait_s=10).queue is not None
    creds = attacker.creds
    _refused(creds, lambda ch: ch.basic_consume(listener.queue, callback=lambda m: None))  # the victim's queue
    _refused(creds, lambda ch: ch.basic_get(listener.queue))
    _refused(creds, lambda ch: ch.queue_declare(f"{EXCHANGE_NAME}.evil", exclusive=True, auto_delete=True))
    _refused(creds, lambda ch: ch.queue_bind(TIER, EXCHANGE_NAME, routing_key(listener.key)))  # a queue it reads
    _refused(creds, lambda ch: ch.exchange_declare(EXCHANGE_NAME, "direct", durable=True))
    _refused(creds, lambda ch: ch.exchange_delete(EXCHANGE_NAME))


def test_a_notice_that_got_through_changes_nothing(client: Client) -> None:
    """Published with the trusted user, standing in for a broker that let a forged notice through: neither a
    view sealed with the routing key nor a bare wake-up is believed."""
    job_id = _queued_job(client)
    listener = client.verdicts
    assert listener is not None
    received = listener.received
    forged = [_forged(client, job_id), VerdictNotice(job_id=job_id, state=JobState.COMPLETED).model_dump_json()]

    def forge() -> None:  # while the client waits: a notice nobody watches is dropped unread
        time.sleep(0.3)
        with Connection(client.app.conf.broker_url) as conn:
            for body in forged:
                Producer(conn.channel()).publish(body, exchange=EXCHANGE, routing_key=routing_key(listener.key),
                                                 content_type="application/json", retry=False)

    forger = threading.Thread(target=forge, daemon=True)
    forger.start()
    with pytest.raises(JobTimeoutError):
        client.wait_all([job_id], 2.0)
    forger.join(5)
    assert listener.received == received + len(forged)
    view = client.ledger.job(job_id)
    assert view is not None and view.state is JobState.QUEUED and view.miner is None


def test_the_honest_client_still_gets_its_verdict_by_notice(client: Client, honest: str,
                                                            attacker: Attacker) -> None:
    listener = client.verdicts
    assert listener is not None
    received = listener.received
    handle = client.submit(ImageRequest("a red circle", "tiny-sd", width=64, height=64, steps=2, seed=5))
    _refused(attacker.creds, lambda ch: Producer(ch).publish(_forged(client, handle.id), exchange=EXCHANGE_NAME,
                                                             routing_key=routing_key(listener.key), retry=False))
    result = handle.result(timeout=240)
    assert result.state is JobState.COMPLETED and result.miner == honest
    assert listener.received > received  # the ledger's notice woke the wait
    earners = {m.address for m in client.ledger.miner_points() if m.points_micro}
    assert attacker.wallet.address not in earners and honest in earners
    assert client.ledger.points_entries(handle.id) == 1
