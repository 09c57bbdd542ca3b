"""The attacker of the adversary suite: a restricted miner broker user of its own (``heurist broker add-miner``)
and its own key, nothing else. Audits are off, so any message on an audit queue is the attacker's doing."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from heurist.access import BrokerAccess, broker_access
from heurist.access.backends.rabbitmq import RabbitMQAccess
from heurist.embedded import EmbeddedNetwork
from heurist.identity import Wallet
from tests.adversary.raw import Attacker


@pytest.fixture(scope="module")
def network_settings() -> dict[str, Any]:
    return {"audit_base_rate": 0.0, "audit_new_miner_rate": 0.0, "audit_suspicious_rate": 0.0}


@pytest.fixture(scope="module")
def access(network: EmbeddedNetwork) -> Iterator[RabbitMQAccess]:
    """The trusted side's broker access; the broker users made here outlive the vhost, so they are deleted."""
    backend = broker_access(network.settings())
    assert isinstance(backend, RabbitMQAccess)
    before = {a.user for a in backend.list_miners()}
    yield backend
    for account in backend.list_miners():
        if account.user not in before:
            backend.api.call("DELETE", f"/users/{account.user}", allow_missing=True)


@pytest.fixture(scope="module")
def attacker(access: BrokerAccess) -> Attacker:
    wallet = Wallet.create()
    return Attacker(wallet, access.add_miner(wallet.address).broker_url)
