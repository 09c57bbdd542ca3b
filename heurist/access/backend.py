"""The broker-access interface: per-miner broker users that an operator hands out and a ban takes away.

Miners are untrusted, so each gets its own broker user limited to its tier queues and to publishing
completions. A ban must cut the miner off the broker, not only make the ledger refuse its completions:
otherwise it keeps taking jobs that honest miners would have run. Only miners an operator approved for
privacy may read the private tier queues (``set_private``): a public miner could otherwise take private jobs
it cannot decrypt and reject or purge them.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from heurist.errors import HeuristError

ADDRESS_RE = re.compile(r"^0x[0-9a-fA-F]{40}$")
USER_PREFIX = "miner-"
INBOX_PREFIX = "inbox."
INBOX_EXCHANGE_PREFIX = "to-ledger."


class BrokerAccessError(HeuristError):
    """The broker's user administration is unreachable, refused us, or does not know the miner."""


def checked_address(address: str) -> str:
    """The miner's EVM address in lowercase; BrokerAccessError unless it is ``0x`` and 40 hex digits."""
    address = address.strip()
    if not ADDRESS_RE.match(address):
        raise BrokerAccessError(f"{address!r} is not a miner address: expected 0x followed by 40 hex digits "
                                "(the address `heurist wallet new` printed)")
    return address.lower()


def miner_user(address: str) -> str:
    """The broker user name of a miner: ``miner-<address lowercase>``; the hostname its worker uses too."""
    return USER_PREFIX + checked_address(address)


def inbox_name(user: str) -> str:
    """The queue that holds what broker user ``user`` sends the ledger: ``inbox.<user>``."""
    return INBOX_PREFIX + user


def inbox_exchange(user: str) -> str:
    """The exchange broker user ``user`` publishes to the ledger through: ``to-ledger.<user>``, bound to its inbox.
    Only that user may write it, so the exchange a message came through names its sender. It is not named like
    the queue: a write right on a queue's name lets a user bind that queue to any exchange it may read."""
    return INBOX_EXCHANGE_PREFIX + user


def exchange_owner(exchange: str) -> str | None:
    """The broker user whose inbox exchange ``exchange`` is, None if it is not one."""
    owner = exchange.removeprefix(INBOX_EXCHANGE_PREFIX)
    return owner if exchange.startswith(INBOX_EXCHANGE_PREFIX) and owner else None


def inbox_owner(queue: str) -> str | None:
    """The broker user whose inbox ``queue`` is, None if it is not an inbox."""
    owner = queue.removeprefix(INBOX_PREFIX)
    return owner if queue.startswith(INBOX_PREFIX) and owner else None


def address_of(user: str) -> str | None:
    """The miner address a broker user name stands for, None if it is not a miner's user."""
    candidate = user.removeprefix(USER_PREFIX)
    return candidate if user.startswith(USER_PREFIX) and ADDRESS_RE.match(candidate) else None


@dataclass(frozen=True)
class MinerCredentials:
    """What the operator hands to a miner: its broker URL (user and password included)."""

    address: str
    user: str
    password: str = field(repr=False)
    broker_url: str = field(repr=False)


@dataclass(frozen=True)
class MinerAccount:
    """A miner known to the broker: whether it may use the broker now, and its open connections."""

    address: str
    user: str
    active: bool
    connections: int | None  # None: this broker cannot tell


class BrokerAccess(ABC):
    """Creates, revokes and restores miners' access to the broker (trusted side: needs admin rights)."""

    @abstractmethod
    def add_miner(self, address: str, max_vram_gb: int | None = None) -> MinerCredentials:
        """Create the miner's user (a new password if it exists) with its permissions and its inbox; refused if
        revoked. ``max_vram_gb``: it may consume only the tier queues of VRAM classes up to that (None: all)."""

    @abstractmethod
    def revoke(self, address: str) -> None:
        """Remove the miner's permissions and close its connections, so its unacked jobs go to others."""

    @abstractmethod
    def restore(self, address: str) -> None:
        """Give a revoked miner its permissions back (same user and password as before)."""

    @abstractmethod
    def forget(self, address: str) -> None:
        """Delete the miner's user and inbox altogether (tests, demos); a ban revokes instead."""

    @abstractmethod
    def list_miners(self) -> list[MinerAccount]:
        """Every miner user this broker knows, sorted by address."""

    @abstractmethod
    def set_private(self, address: str, allowed: bool) -> None:
        """Give or take a miner's right to consume the private tier queues (``private.<tier>.<model>``); taking
        it also closes its connections so its consumers stop. A revoked miner stays revoked: ``restore`` then
        gives it back its permissions with this right as last set."""
