"""Uptime needs serving (issue 13, finding 4), on a real RabbitMQ and the ledger's database (SQLite and
PostgreSQL): a process that only sends signed heartbeats, consuming nothing, used to earn full uptime. Now a
heartbeat counts only while the miner's own broker user holds a consumer, as the broker reports it."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from kombu import Connection, Exchange, Queue
from sqlalchemy import Engine

from heurist.access import MinerCredentials, broker_access
from heurist.access.backend import BrokerAccessError
from heurist.access.backends.rabbitmq import RabbitMQAccess
from heurist.catalog import load_catalog
from heurist.embedded import wait_until
from heurist.identity import Wallet
from heurist.jobs import Heartbeat, MinerHello, SignedHeartbeat, SignedHello
from heurist.ledger.service import Ledger
from heurist.ledger.serving import ServingUsers
from heurist.ledger.tables import Reason
from heurist.ledger.uptime import EpochClock, UptimeBook
from heurist.settings import Settings
from heurist.signing import sign_message
from heurist.storage.backend import ObjectStore
from tests.fixtures.ledger import DEVICE

TIER = "vram8.tiny-sd"


@pytest.fixture(scope="module")
def access(rabbit_url: str) -> Iterator[RabbitMQAccess]:
    backend = broker_access(Settings(_env_file=None, broker_url=rabbit_url))  # type: ignore[call-arg]
    assert isinstance(backend, RabbitMQAccess)
    with Connection(rabbit_url) as admin:  # the trusted side declares the tier queue (`heurist broker setup`)
        Queue(TIER, Exchange(TIER, "direct"), routing_key=TIER).bind(admin.default_channel).declare()
    added: list[str] = []
    add = backend.add_miner
    backend.add_miner = lambda address, max_vram_gb=None: added.append(address) or add(address, max_vram_gb)  # type: ignore[method-assign]
    yield backend
    for address in added:
        backend.forget(address)


def _beat(wallet: Wallet) -> SignedHeartbeat:
    heartbeat = Heartbeat(miner=wallet.address, sent_at=time.time())
    return SignedHeartbeat(heartbeat=heartbeat, signature=sign_message(wallet, heartbeat))


def _registered(engine: Engine, store: ObjectStore, access: RabbitMQAccess) -> tuple[Wallet, MinerCredentials]:
    wallet = Wallet.create()
    creds = access.add_miner(wallet.address)
    hello = MinerHello(miner=wallet.address, models=["tiny-sd"], queues=[TIER], device=DEVICE, started_at=time.time())
    signed = SignedHello(hello=hello, signature=sign_message(wallet, hello))
    assert Ledger(engine, load_catalog(), store).register_miner(signed, sender=creds.user).accepted
    return wallet, creds


def test_heartbeats_count_only_while_the_miners_user_consumes(engine: Engine, object_store: ObjectStore,
                                                              access: RabbitMQAccess) -> None:
    book = UptimeBook(engine, EpochClock(interval_s=1, epoch_s=3600),
                      serving=ServingUsers(access.consuming_users, ttl_s=0))  # the broker's answer each time
    idle, idle_creds = _registered(engine, object_store, access)
    busy, busy_creds = _registered(engine, object_store, access)
    with Connection(busy_creds.broker_url) as conn:  # the serving miner: a consumer on its tier, as itself
        channel = conn.channel()
        channel.basic_consume(TIER, callback=lambda message: None)
        wait_until(lambda: busy_creds.user in access.consuming_users(), 30, "the broker to list the consumer")
        only_beats = book.record(_beat(idle), sender=idle_creds.user)
        serving = book.record(_beat(busy), sender=busy_creds.user)
        assert (only_beats.accepted, only_beats.reason) == (False, Reason.NOT_SERVING)
        assert serving.accepted
    assert book.uptime(idle.address) == 0.0 and book.uptime(busy.address) > 0.0
    wait_until(lambda: busy_creds.user not in access.consuming_users(), 30, "the consumer to be gone")
    time.sleep(1.1)  # the next slot
    stopped = book.record(_beat(busy), sender=busy_creds.user)
    assert (stopped.accepted, stopped.reason) == (False, Reason.NOT_SERVING)  # it stopped serving: no more uptime


def test_an_unreachable_broker_counts_the_last_list_then_nobody() -> None:
    now = [0.0]
    answers: list[set[str] | BrokerAccessError] = [{"miner-a"}, BrokerAccessError("management API down")]

    def listing() -> set[str]:
        answer = answers[0] if len(answers) == 1 else answers.pop(0)
        if isinstance(answer, BrokerAccessError):
            raise answer
        return answer

    serving = ServingUsers(listing, ttl_s=10, stale_s=60, recheck_s=2, clock=lambda: now[0])
    assert serving("miner-a") and not serving("miner-b")
    now[0] = 30.0  # the list is refreshed and the broker does not answer: the last list still holds ...
    assert serving("miner-a")
    now[0] = 61.0  # ... until it is older than stale_s: then nobody counts
    assert not serving("miner-a")
