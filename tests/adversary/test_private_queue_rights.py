"""Issue 16, an attack the issue does not name: a public miner's broker user could read the private tier queues.

It cannot decrypt a private job, but with the read right it could take every one and reject it (dead-lettered),
or purge ``private.<tier>.<model>``: a denial of service on private jobs, repeated on every re-send. Now only
a miner an operator approved for privacy (``BrokerAccess.set_private``) may read them; withdrawing the right
closes its connections so its consumers stop. Raw AMQP on the miner's own restricted user, no Celery.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from amqp.exceptions import AccessRefused, ConnectionForced, NotAllowed
from kombu import Connection, Producer

from heurist.access import BrokerAccessError, MinerCredentials, broker_access
from heurist.access.backends.embedded import EmbeddedAccess
from heurist.access.backends.rabbitmq import PRIVATE_TAG, RabbitMQAccess, quoted, user_tags
from heurist.access.topology import setup_broker
from heurist.catalog import Catalog, load_catalog
from heurist.embedded import wait_until
from heurist.identity import Wallet
from heurist.settings import Settings
from tests.adversary.raw import Attacker
from tests.fixtures.broker import forgetting_access

TIER = "vram8.tiny-sd"
PRIVATE = f"private.{TIER}"


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog(None)


@pytest.fixture(scope="module")
def access(rabbit_url: str, catalog: Catalog) -> Iterator[RabbitMQAccess]:
    """The trusted side's broker access on a fresh vhost set up by `heurist broker setup`; the broker users made
    here outlive the vhost, so they are deleted afterwards."""
    settings = Settings(_env_file=None, broker_url=rabbit_url)  # type: ignore[call-arg]
    setup_broker(settings, catalog)
    with forgetting_access(settings) as backend:
        yield backend


@pytest.fixture(scope="module")
def admin(rabbit_url: str) -> Iterator[Connection]:
    with Connection(rabbit_url) as conn:
        yield conn


@pytest.fixture(scope="module")
def attacker(access: RabbitMQAccess) -> Attacker:
    wallet = Wallet.create()
    return Attacker(wallet, access.add_miner(wallet.address))


def _job(admin: Connection, queue: str, n: int) -> None:
    with admin.channel() as channel:
        Producer(channel).publish({"job": n}, exchange=queue, routing_key=queue, retry=False)


def _depth(admin: Connection, queue: str) -> int:
    """Messages ready in ``queue`` (not those a consumer holds unacked)."""
    with admin.channel() as channel:
        return int(channel.queue_declare(queue, passive=True).message_count)


def _refused(creds: MinerCredentials, operation: Callable[[Any], object]) -> None:
    """``operation`` on a fresh connection of the miner's user is refused by the broker with ACCESS_REFUSED."""
    with Connection(creds.broker_url) as conn:
        with pytest.raises(AccessRefused) as refused:
            operation(conn.channel())
        assert refused.value.reply_code == 403


def _basic_get(channel: Any, queue: str) -> object:
    return channel.basic_get(queue)


def _get(creds: MinerCredentials, queue: str) -> Any:
    """basic_get ``queue`` as the miner; unacked, so what it got goes back when the connection closes."""
    with Connection(creds.broker_url) as conn:
        message = conn.channel().basic_get(queue)
        return None if message is None else message.body


def test_setup_declares_the_private_twin_of_every_tier_queue(access: RabbitMQAccess, admin: Connection,
                                                             catalog: Catalog) -> None:
    for spec in catalog.values():
        assert _depth(admin, spec.private_queue) == 0, spec.private_queue  # passive: NOT_FOUND if undeclared


def test_a_public_miner_can_neither_take_nor_purge_private_jobs(attacker: Attacker, admin: Connection,
                                                               catalog: Catalog) -> None:
    creds = attacker.creds
    _job(admin, PRIVATE, 1)
    _job(admin, TIER, 2)
    for queue in sorted({spec.private_queue for spec in catalog.values()}):
        _refused(creds, partial(_basic_get, queue=queue))  # every private tier, its own included
    _refused(creds, lambda ch: ch.basic_consume(PRIVATE, callback=print))
    _refused(creds, lambda ch: ch.queue_purge(PRIVATE))
    assert _depth(admin, PRIVATE) == 1  # the private job is still there for a privacy miner
    assert _get(creds, TIER) == '{"job": 2}'  # its public tier queue stays readable
    wait_until(lambda: _depth(admin, TIER) == 1, 10, "the unacked public job to be requeued")


def test_approval_grants_private_queues_and_withdrawal_cuts_the_consumer_off(access: RabbitMQAccess,
                                                                             admin: Connection) -> None:
    wallet = Wallet.create()
    creds = access.add_miner(wallet.address)
    _refused(creds, lambda ch: ch.basic_get(PRIVATE))
    access.set_private(wallet.address, True)
    _job(admin, PRIVATE, 3)
    ready = _depth(admin, PRIVATE)
    got: list[Any] = []
    with Connection(creds.broker_url) as conn:  # the same password still works: the tag change kept it
        channel = conn.channel()
        channel.basic_qos(0, 1, False)
        channel.basic_consume(PRIVATE, callback=lambda message: got.append(message.body))
        while not got:
            conn.drain_events(timeout=5)
        assert _depth(admin, PRIVATE) == ready - 1  # it holds one private job, unacked
        access.set_private(wallet.address, False)
        with pytest.raises((ConnectionForced, ConnectionError)):  # the broker closed it (CONNECTION_FORCED, or
            conn.drain_events(timeout=5)                           # a reset while answering close-ok)
    wait_until(lambda: _depth(admin, PRIVATE) == ready, 10, "the withdrawn miner's private job to be requeued")
    _refused(creds, lambda ch: ch.basic_get(PRIVATE))
    _refused(creds, lambda ch: ch.basic_consume(PRIVATE, callback=print))
    _get(creds, TIER)  # public work goes on


def test_restore_and_add_miner_keep_the_approval_and_its_withdrawal(access: RabbitMQAccess, admin: Connection,
                                                                    catalog: Catalog) -> None:
    bigger = next(s.private_queue for s in catalog.values() if s.vram.gb > 8)
    address = Wallet.create().address
    creds = access.add_miner(address, max_vram_gb=8)
    access.set_private(address, True)
    record = access.api.get(f"/users/{quoted(creds.user)}")
    assert PRIVATE_TAG in user_tags(record) and "heurist-vram-8" in user_tags(record)
    access.revoke(address)
    access.set_private(address, True)  # approving a revoked miner does not give it its access back
    with pytest.raises(NotAllowed), Connection(creds.broker_url) as conn:
        conn.connect()
    access.restore(address)
    _get(creds, PRIVATE)
    _refused(creds, lambda ch: ch.basic_get(bigger))  # the VRAM limit is kept too
    renewed = access.add_miner(address, max_vram_gb=8)  # a new password, the same approval
    _get(renewed, PRIVATE)
    access.set_private(address, False)
    access.restore(address)
    _refused(renewed, lambda ch: ch.basic_get(PRIVATE))
    _get(renewed, TIER)
    _refused(access.add_miner(address), lambda ch: ch.basic_get(PRIVATE))


def test_set_private_needs_a_broker_user(access: RabbitMQAccess) -> None:
    with pytest.raises(BrokerAccessError, match="add-miner"):
        access.set_private(Wallet.create().address, True)


def test_embedded_set_private_changes_nothing_and_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    backend = broker_access(Settings(_env_file=None, data_dir=tmp_path))  # type: ignore[call-arg]
    assert isinstance(backend, EmbeddedAccess)
    address = Wallet.create().address
    backend.add_miner(address)
    with caplog.at_level(logging.INFO, logger="heurist.access"):
        backend.set_private(address, True)
    assert "no per-user permissions" in caplog.text and "key-release" in caplog.text
    assert [(a.address, a.active) for a in backend.list_miners()] == [(address.lower(), True)]
