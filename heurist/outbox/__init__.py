"""A transactional outbox: trusted messages written in the transaction that decides them, published after."""

from heurist.outbox.relay import OutboxRelay, install_relay, put
from heurist.outbox.tables import OutboxEntry

__all__ = ["OutboxEntry", "OutboxRelay", "install_relay", "put"]
