"""Attacks 1, 2 (reshape), 7 (flood) and 9 of issue 12, made with a miner's own restricted broker user and raw kombu.

1. ``exchange.delete("celeryev")`` once stopped the ledger, the auditor and every miner within 20 s. Miners now
   have no configure right on anything (``heurist.access.permissions``): the broker refuses it, and every other
   delete, declare or reshape of a shared queue or exchange.
2. Deleting a tier queue and re-declaring it with ``x-max-length=0``: refused the same way (purges are recovered
   by the stranded-job sweep, ``tests/adversary/test_purge.py``).
7. 30,000 junk messages in 2 s delayed an honest completion past its deadline. A miner now publishes only into its
   own inbox, which the ``heurist-inboxes`` policy bounds (reject-publish): the flood fills that inbox only.
9. A banned operator came back with a fresh key on the same broker user; a vram8 miner read vram80 queues;
   miners spoofed ``celeryev`` events and pidbox replies. Keys are bound to their operator's broker user and a ban
   covers all of them; ``add-miner --vram`` limits the tiers a user reads; events and pidbox are not writable.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from amqp.exceptions import AccessRefused, NotAllowed
from kombu import Connection, Producer
from sqlalchemy import text

from heurist.access import BrokerAccess, MinerCredentials
from heurist.access.backend import inbox_exchange, inbox_name
from heurist.catalog import load_catalog
from heurist.client import Client
from heurist.embedded import EmbeddedNetwork, wait_until
from heurist.identity import Wallet
from heurist.jobs import DeviceInfo, JobState, MinerHello, SignedHello
from heurist.ledger.audit_service import AuditLedger
from heurist.signing import sign_delegation, sign_message
from tasks.names import RECORD_HEARTBEAT, REGISTER_MINER
from tests.adversary.conftest import send_to_inbox
from tests.fixtures.broker import ready

TIER = "vram8.tiny-sd"
FLOOD = 30_000


def _refused(creds: MinerCredentials, operation: Callable[[Any], object]) -> None:
    """``operation`` on a fresh channel of the attacker's connection is refused by the broker."""
    with Connection(creds.broker_url, transport_options={"confirm_publish": True}) as conn:
        channel = conn.channel()
        with pytest.raises(AccessRefused):
            operation(channel)
            channel.basic_qos(0, 1, False)  # a refused publish surfaces on the next synchronous call


def _publish(exchange: str, routing_key: str = "") -> Callable[[Any], object]:
    return lambda ch: Producer(ch).publish({"spoof": True}, exchange=exchange, routing_key=routing_key, retry=False)


def _hello(wallet: Wallet, operator: Wallet | None = None) -> dict[str, Any]:
    hello = MinerHello(miner=wallet.address, operator=operator.address if operator else None, models=["tiny-sd"],
                       queues=[TIER], device=DeviceInfo(kind="cpu", name="cpu", vram_gb=8.0), started_at=time.time())
    vouch = sign_delegation(operator, wallet.address) if operator else None
    return SignedHello(hello=hello, signature=sign_message(wallet, hello),
                       operator_signature=vouch).model_dump(mode="json")


def _job_completes(client: Client, honest: str, seed: int) -> float:
    started = time.monotonic()
    result = client.submit_image("a lighthouse", model="tiny-sd", steps=8, seed=seed).result(timeout=180)
    assert result.state is JobState.COMPLETED and result.miner == honest and result.points > 0
    return time.monotonic() - started


def test_a_miner_can_delete_declare_or_reshape_nothing(network: EmbeddedNetwork, client: Client,
                                                       access: BrokerAccess, honest: str) -> None:
    attacker = access.add_miner(Wallet.create().address)
    for name in ("celeryev", "celery.pidbox", "reply.celery.pidbox", "ledger", "heurist.stream", TIER, "heurist.dead",
                 inbox_exchange(attacker.user)):
        _refused(attacker, lambda ch, name=name: ch.exchange_delete(name))
    for name in (TIER, "ledger", "dead-letters", inbox_name(attacker.user)):
        _refused(attacker, lambda ch, name=name: ch.queue_delete(name))
    _refused(attacker, lambda ch: ch.queue_declare(TIER, durable=True, arguments={"x-max-length": 0}))
    _refused(attacker, lambda ch: ch.queue_declare("attacker.own", auto_delete=True))
    _refused(attacker, lambda ch: ch.exchange_declare("celeryev", "topic", durable=True))
    # Binding its inbox to a tier exchange would copy every job into it: binding needs write on the queue's name.
    _refused(attacker, lambda ch: ch.queue_bind(inbox_name(attacker.user), TIER, TIER))
    for exchange, key in (("celeryev", "worker.heartbeat"), ("celery.pidbox", ""), ("reply.celery.pidbox", "x"),
                          (TIER, TIER), ("", TIER), ("ledger", "ledger"), ("", "ledger")):
        _refused(attacker, _publish(exchange, key))  # no spoofed events or replies, no forged jobs, no ledger
    time.sleep(2)  # what once stopped every worker within 20 s now stops none
    network.check_alive()
    assert not network.restarts, f"restarted: {dict(network.restarts)}"  # none died and was restarted
    _job_completes(client, honest, seed=11)
    assert not client.ledger.is_registered(attacker.address)


def test_a_miner_reads_only_the_tiers_it_was_given(network: EmbeddedNetwork, access: BrokerAccess) -> None:
    bigger = sorted({m.queue for m in load_catalog(network.settings().catalog_path).values()
                     if not m.queue.startswith("vram8.")})
    assert bigger, "the catalog has models above vram8"
    small = access.add_miner(Wallet.create().address, max_vram_gb=8)
    for queue in bigger:
        _refused(small, lambda ch, queue=queue: ch.basic_get(queue))
    with Connection(small.broker_url) as conn:
        conn.channel().basic_get(TIER)  # vram8 queues stay readable (unacked: anything got is requeued on close)
    access.restore(small.address)  # a restore keeps the limit (recorded on the user)
    _refused(small, lambda ch: ch.basic_get(bigger[-1]))


def test_a_flood_fills_only_the_flooders_inbox(network: EmbeddedNetwork, client: Client, access: BrokerAccess,
                                               honest: str) -> None:
    baseline = _job_completes(client, honest, seed=21)
    attacker = access.add_miner(Wallet.create().address)
    junk = {"heartbeat": {"miner": attacker.address, "sent_at": 0}, "signature": "0x" + "00" * 65}
    started = time.monotonic()
    inbox = inbox_name(attacker.user)
    with Connection(attacker.broker_url) as conn:
        producer = Producer(conn.channel())
        for _ in range(FLOOD):  # no confirms: as fast as the attacker can write
            producer.publish({"junk": junk}, exchange=inbox_exchange(attacker.user), routing_key=inbox,
                             user_id=attacker.user,
                             headers={"task": RECORD_HEARTBEAT, "id": "x", "lang": "py"}, retry=False)
    flood_s = time.monotonic() - started
    held = ready(client, inbox)
    limit = network.settings().inbox_max_messages
    in_flight = 2  # the ledger's prefetch: messages it holds unacked are not counted by the bound, and may return
    assert held <= limit + in_flight, f"the inbox holds {held} > {limit}: its bound did not hold"
    during = _job_completes(client, honest, seed=22)  # judged on time, whatever is queued behind the attacker
    wait_until(lambda: ready(client, inbox) == 0, 300, "the ledger to drain the flood", check=network.check_alive)
    network.check_alive()
    assert not network.restarts, f"restarted: {dict(network.restarts)}"
    assert not client.ledger.is_registered(attacker.address)
    print(f"\n{FLOOD} junk messages published in {flood_s:.1f}s, inbox held {held} (limit {limit}); honest job "
          f"{baseline:.1f}s before, {during:.1f}s during the flood")


def test_a_ban_covers_every_key_of_the_operator(network: EmbeddedNetwork, client: Client, access: BrokerAccess,
                                                honest: str) -> None:
    operator = Wallet.create()
    creds = access.add_miner(operator.address)
    send_to_inbox(creds, REGISTER_MINER, _hello(operator))
    wait_until(lambda: client.ledger.is_registered(operator.address), 30, "the operator to register")
    stranger = Wallet.create()  # a key the operator never vouched for: not registered on its user
    send_to_inbox(creds, REGISTER_MINER, _hello(stranger))
    gpu = operator.derive(1)
    send_to_inbox(creds, REGISTER_MINER, _hello(gpu, operator))  # a vouched GPU worker's key: registered
    wait_until(lambda: client.ledger.is_registered(gpu.address), 30, "the GPU worker key to register")
    assert not client.ledger.is_registered(stranger.address)
    assert client.ledger.operator_of(gpu.address) == operator.address.lower()

    AuditLedger(client.ledger.engine).ban(gpu.address, "failed audits")  # one key is banned ...
    access.revoke(client.ledger.operator_of(gpu.address))  # ... and, as the auditor does, its operator's user
    with pytest.raises(NotAllowed), Connection(creds.broker_url) as conn:
        conn.connect()
    access.restore(operator.address)  # even if an operator gives the user back by mistake:
    fresh = operator.derive(2)
    send_to_inbox(creds, REGISTER_MINER, _hello(fresh, operator))
    send_to_inbox(creds, REGISTER_MINER, _hello(operator))
    other = access.add_miner(Wallet.create().address)  # and another user cannot take the banned operator's keys
    send_to_inbox(other, REGISTER_MINER, _hello(fresh, operator))
    for user in (creds.user, other.user):
        wait_until(lambda user=user: ready(client, inbox_name(user)) == 0, 30, "the ledger to read the hellos")
    _job_completes(client, honest, seed=31)
    assert not client.ledger.is_registered(fresh.address)
    audits = AuditLedger(client.ledger.engine)
    assert audits.is_banned(operator.address) and audits.is_banned(gpu.address)  # every key of the user
    assert not audits.is_banned(honest)
    with client.ledger.engine.connect() as db:
        users = dict(db.execute(text("SELECT address, broker_user FROM miners")).all())
    assert users[operator.address] == users[gpu.address] == creds.user
