"""Who may use the broker: per-miner broker users, revoked when a miner is banned.

``broker_access(settings)`` picks the backend by the broker URL's scheme, like ``heurist.storage`` picks
its object store: RabbitMQ (management HTTP API) for ``amqp://``, a record-only backend for the embedded
SQLite broker, which has no users.
"""

from __future__ import annotations

from heurist.access.backend import (
    BrokerAccess,
    BrokerAccessError,
    MinerAccount,
    MinerCredentials,
    checked_address,
    miner_user,
)
from heurist.errors import ConfigError
from heurist.settings import Settings, is_amqp

__all__ = ["BrokerAccess", "BrokerAccessError", "MinerAccount", "MinerCredentials", "broker_access",
           "checked_address", "miner_user"]


def broker_access(settings: Settings) -> BrokerAccess:
    """The broker-access backend for the settings' broker (no network call until first used)."""
    url = settings.resolved_broker_url()
    scheme = url.split("://", 1)[0]
    if is_amqp(url):
        from heurist.access.backends.rabbitmq import RabbitMQAccess

        return RabbitMQAccess.from_settings(settings)
    if scheme.startswith("embedded+"):
        from heurist.access.backends.embedded import EmbeddedAccess

        return EmbeddedAccess.from_settings(settings)
    raise ConfigError(f"no per-miner broker access for {scheme}:// brokers: use RabbitMQ (amqp://) or the "
                      "embedded broker (embedded+sqlite://)")
