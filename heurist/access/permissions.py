"""What a miner's RabbitMQ user may touch, as the configure/write/read regexes RabbitMQ checks.

RabbitMQ checks a regex against the name of each queue or exchange an operation touches (the default
exchange is ``amq.default``). The rules, and why each name is in them:

* tier queues (``vram8.tiny-sd``, ``private.vram8.x``) and their same-named exchanges: the worker
  declares them (configure), binds queue to exchange (write on the queue, read on the exchange) and
  consumes (read). Nothing else is readable: not ``ledger``, not ``audit.*``, not other miners' pidboxes.
* ``ledger`` exchange: write only, so a miner can send completions and its hello but not read or delete
  the ledger queue. Miners publish to it by name (``heurist.access.miner_app``), never to ``amq.default``,
  which would let them write into any queue, ``audit.*`` included.
* ``<user>-….celery.pidbox``: its own remote-control queue (``celery inspect`` sees the miner), bound to
  the ``celery.pidbox`` fanout (read, to receive broadcasts; never write, which would let a miner send
  ``shutdown`` to the ledger); replies go to ``reply.celery.pidbox`` (write).
* ``heurist.stream`` exchange: write only, so a miner can publish a streamed job's tokens
  (``heurist.streams``) but neither read other jobs' streams nor declare the exchange (applications do).
* ``celeryev``: worker and task events for monitoring (write; never read, which would show every job's
  arguments, presigned URLs included). So miners run without gossip and mingle.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from heurist.catalog.schema import VramClass
from heurist.errors import ConfigError

TIERS = "|".join(re.escape(v.value) for v in VramClass)
TIER_QUEUE = rf"(?:private\.)?(?:{TIERS})\.[a-z0-9][a-z0-9.-]*"
PIDBOX_EXCHANGE = r"celery\.pidbox"
REPLY_EXCHANGE = r"reply\.celery\.pidbox"
EVENTS_EXCHANGE = r"celeryev"
STREAM_EXCHANGE = r"heurist\.stream"


@dataclass(frozen=True)
class Permissions:
    """RabbitMQ's three permission regexes for one user on one vhost."""

    configure: str
    write: str
    read: str

    def as_json(self) -> dict[str, str]:
        return {"configure": self.configure, "write": self.write, "read": self.read}


def _anchored(*names: str) -> str:
    return "^(?:" + "|".join(names) + ")$"


def miner_permissions(user: str, ledger_queue: str, audit_prefix: str) -> Permissions:
    """The permissions of miner user ``user``; ConfigError if a trusted queue name looks like a tier queue."""
    for trusted in (ledger_queue, f"{audit_prefix}.x"):
        if re.fullmatch(TIER_QUEUE, trusted):
            raise ConfigError(f"trusted queue name {trusted!r} looks like a miner's tier queue; rename it "
                              "(HEURIST_LEDGER_QUEUE, HEURIST_AUDIT_QUEUE_PREFIX)")
    pidbox = re.escape(user) + r"-.+\.celery\.pidbox"
    return Permissions(
        configure=_anchored(TIER_QUEUE, pidbox, PIDBOX_EXCHANGE, REPLY_EXCHANGE, EVENTS_EXCHANGE),
        write=_anchored(TIER_QUEUE, pidbox, re.escape(ledger_queue), REPLY_EXCHANGE, EVENTS_EXCHANGE,
                        STREAM_EXCHANGE),
        read=_anchored(TIER_QUEUE, pidbox, PIDBOX_EXCHANGE),
    )
