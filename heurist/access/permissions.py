"""What a miner's RabbitMQ user may touch, as the configure/write/read regexes RabbitMQ checks.

RabbitMQ checks a regex against the name of each queue or exchange an operation touches (the default
exchange is ``amq.default``). The rules (``docs/trust-boundary.md`` says why for each):

* **configure: nothing.** Only the trusted side declares (``heurist broker setup`` and ``add-miner``,
  ``heurist.access.topology``). A configure right on any shared name let one ``exchange.delete("celeryev")``
  stop the ledger, the auditor and every miner within 20 s, and a tier queue be deleted and re-declared with
  ``x-max-length=0``.
* **read: the tier queues of the miner's VRAM classes** (``vram8.tiny-sd``): consuming needs it. RabbitMQ's
  read right also allows ``queue.purge``; the stranded-job sweep re-sends purged jobs.
  Nothing else is readable: not ``ledger``, not ``audit.*``, not another miner's inbox, not the streams, not a
  client's verdict queue (``heurist.verdicts``).
* **read of the private tier queues** (``private.vram8.tiny-sd``) **only for a miner an operator approved for
  privacy** (``private=True``; ``BrokerAccess.set_private``, which ``heurist privacy approve`` calls). A public
  miner cannot decrypt a private job, but with the read right it could take every one and reject it (it is
  dead-lettered) or purge the private queues: a denial of service on private jobs, repeated on every re-send.
* **write: its own inbox exchange ``to-ledger.<user>``** (completions, hellos, heartbeats, failures: bounded, drained
  fairly by the ledger, every message's ``user_id`` validated by the broker) **and ``heurist.stream``** (streamed
  tokens, MAC'd with the job's stream key). Never ``amq.default`` (which reaches every queue), never a tier queue
  (forged jobs), never ``ledger``, ``celeryev`` or ``celery.pidbox`` (miners run without events and remote
  control: monitoring shows them from the ledger's signed heartbeats), never ``heurist.verdicts`` (forged verdict
  notices: tests/adversary/test_forged_verdicts.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from heurist.catalog.schema import VramClass
from heurist.errors import ConfigError

TIERS = "|".join(re.escape(v.value) for v in VramClass)
TIER_QUEUE = rf"(?:private\.)?(?:{TIERS})\.[a-z0-9][a-z0-9.-]*"
STREAM_EXCHANGE = r"heurist\.stream"
NOTHING = "^$"


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


def tier_queues(max_vram_gb: int | None, private: bool = False) -> str:
    """The regex of the tier queues a miner of ``max_vram_gb`` may consume (None: every tier); with ``private``,
    their ``private.`` twins as well."""
    tiers = [v for v in VramClass if max_vram_gb is None or v.gb <= max_vram_gb]
    if not tiers:
        smallest = min(v.gb for v in VramClass)
        raise ConfigError(f"--vram {max_vram_gb}: no VRAM class fits; the smallest is {smallest} GB")
    prefix = r"(?:private\.)?" if private else ""
    return rf"{prefix}(?:{'|'.join(re.escape(v.value) for v in tiers)})\.[a-z0-9][a-z0-9.-]*"


def miner_permissions(user: str, inbox: str, trusted: tuple[str, ...], max_vram_gb: int | None = None,
                      private: bool = False) -> Permissions:
    """The permissions of miner user ``user`` publishing to exchange ``inbox``; ``private``: an operator approved
    it for privacy, so it may also read the private tier queues. ConfigError if a trusted queue name
    (``trusted``: the ledger queue, an audit queue) looks like a tier queue, public or private."""
    for name in trusted:
        if re.fullmatch(TIER_QUEUE, name):
            raise ConfigError(f"trusted queue name {name!r} looks like a miner's tier queue; rename it "
                              "(HEURIST_LEDGER_QUEUE, HEURIST_AUDIT_QUEUE_PREFIX)")
    return Permissions(configure=NOTHING, write=_anchored(re.escape(inbox), STREAM_EXCHANGE),
                       read=_anchored(tier_queues(max_vram_gb, private)))
