"""What every attack test needs: the trusted side's broker access, an honest miner on its own broker user, and
raw Celery messages published the way an attacker would (kombu on its own restricted user, declaring nothing)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import pytest
from kombu import Connection, Producer

from heurist.access import BrokerAccess, MinerCredentials
from heurist.access.backend import inbox_exchange, inbox_name
from heurist.access.backends.rabbitmq import RabbitMQAccess
from heurist.client import Client
from heurist.embedded import EmbeddedNetwork, wait_until
from heurist.identity import Wallet
from tests.adversary.raw import Attacker
from tests.fixtures.broker import forgetting_access


@pytest.fixture(scope="module")
def access(network: EmbeddedNetwork) -> Iterator[RabbitMQAccess]:
    """The trusted side's broker access; the broker users made through it are deleted afterwards."""
    with forgetting_access(network.settings()) as backend:
        yield backend


@pytest.fixture(scope="module")
def honest_models() -> list[str]:
    """What the honest miner serves; a module overrides this fixture to change it."""
    return ["tiny-sd"]


@pytest.fixture(scope="module")
def honest(network: EmbeddedNetwork, client: Client, access: BrokerAccess, honest_models: list[str]) -> str:
    """An honest miner on its own broker user (`heurist broker add-miner`), registered."""
    wallet = network.start_miner(honest_models, name="honest",
                                 broker_url=lambda address: access.add_miner(address).broker_url)
    wait_until(lambda: client.ledger.is_registered(wallet.address), 300, "the honest miner to register",
               check=network.check_alive)
    return wallet.address


def task_headers(task: str) -> dict[str, Any]:
    """Celery protocol-2 headers of a message running ``task``."""
    task_id = str(uuid.uuid4())
    return {"lang": "py", "task": task, "id": task_id, "root_id": task_id, "parent_id": None, "group": None,
            "retries": 0, "eta": None, "expires": None, "timelimit": [None, None], "argsrepr": "(...)",
            "kwargsrepr": "{}", "origin": "attacker", "ignore_result": True}


def task_body(*args: Any) -> bytes:
    return json.dumps([list(args), {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]).encode()


def send_to_inbox(creds: MinerCredentials, task: str, *args: Any, confirm: bool = True) -> None:
    """Publish ``task(*args)`` as the attacker into its own inbox, its only way to the ledger."""
    publish_to_inbox(creds, [(task_headers(task), task_body(*args), "application/json")], confirm=confirm)


def publish_to_inbox(creds: MinerCredentials, messages: Iterable[tuple[dict[str, Any], bytes, str]], *,
                     confirm: bool = True) -> None:
    """Publish raw ``(headers, body, content type)`` messages as the attacker, on one connection: kombu on its own
    broker user into its own inbox (the only exchange it may write towards the ledger), declaring nothing,
    ``user_id`` its own user (RabbitMQ refuses any other). With ``confirm`` a refusal by the broker raises."""
    inbox = inbox_name(creds.user)
    with Connection(creds.broker_url, transport_options={"confirm_publish": confirm}) as conn:
        producer = Producer(conn.channel())
        for headers, body, content_type in messages:
            producer.publish(body, exchange=inbox_exchange(creds.user), routing_key=inbox, headers=headers,
                             content_type=content_type, content_encoding="utf-8", user_id=creds.user, retry=False)


@pytest.fixture(scope="module")
def attacker(access: BrokerAccess) -> Attacker:
    """A miner's key and its own restricted broker user, nothing else."""
    wallet = Wallet.create()
    return Attacker(wallet, access.add_miner(wallet.address))
