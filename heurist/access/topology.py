"""The broker's shape, declared by the trusted side only: ``heurist broker setup`` once per vhost, and each
miner's inbox by ``heurist broker add-miner``. Miners have no configure right (``heurist.access.permissions``),
so they cannot delete or reshape anything another process uses.

* **Tier queues** (two per catalog model, public and ``private.``, each with its same-named direct exchange and
  binding, as Celery names them), the ``ledger`` queue (trusted publishers only) and the ``heurist.stream``
  exchange.
* **Inboxes.** Each miner's broker user ``U`` publishes to the ledger only through exchange ``to-ledger.U``
  into queue ``inbox.U``. A policy bounds every inbox (``inbox_max_messages``, ``inbox_max_bytes``, overflow
  ``reject-publish``): a flooding miner fills its own inbox and the broker refuses the rest. The byte bound
  is also the largest message a miner can get to the ledger at all (a 64 MB message once took the ledger
  from 206 MB to 662 MB RSS). The ledger consumes every inbox on one channel (``heurist.ledger.inboxes``).
* **Dead letters.** Tier queues, the ledger queue and inboxes dead-letter what a consumer rejects into
  ``heurist.dead`` / ``dead-letters`` (bounded, oldest dropped first), where ``heurist broker dead-letters``
  lists it.

Queue arguments are set by **policies**, not by declaration arguments: a policy applies to queues that
already exist and can be changed later, while a queue re-declared with other arguments than it was made
with fails with PRECONDITION_FAILED (in every client that declares it, Celery's included).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from kombu import Connection, Exchange

from heurist.access.backend import INBOX_PREFIX, inbox_exchange, inbox_name
from heurist.access.backends.rabbitmq import ManagementAPI, quoted
from heurist.access.permissions import TIER_QUEUE
from heurist.access.queues import STREAM_EXCHANGE, direct_queue
from heurist.catalog import Catalog
from heurist.deadletters import DEAD_EXCHANGE, DEAD_QUEUE, dead_letter_queue
from heurist.settings import Settings

STREAM_QUEUES = r"^heurist\.stream\."


@dataclass(frozen=True)
class Policy:
    name: str
    pattern: str
    definition: dict[str, object]
    priority: int = 10

    def as_json(self) -> dict[str, object]:
        return {"pattern": self.pattern, "definition": self.definition, "priority": self.priority,
                "apply-to": "queues"}


def policies(settings: Settings) -> list[Policy]:
    """Every queue argument of the network, as RabbitMQ policies (the patterns do not overlap: one applies)."""
    dead: dict[str, object] = {"dead-letter-exchange": DEAD_EXCHANGE}
    return [
        Policy("heurist-inboxes", "^" + re.escape(INBOX_PREFIX),
               {**dead, "max-length": settings.inbox_max_messages, "max-length-bytes": settings.inbox_max_bytes,
                "overflow": "reject-publish"}),
        Policy("heurist-tiers", f"^{TIER_QUEUE}$", dead),
        Policy("heurist-ledger", f"^{re.escape(settings.ledger_queue)}$", dead),
        Policy("heurist-dead-letters", f"^{DEAD_QUEUE}$",
               {"max-length": settings.dead_letters_max, "overflow": "drop-head"}),
        Policy("heurist-streams", STREAM_QUEUES,
               {"max-length-bytes": settings.inbox_max_bytes, "overflow": "reject-publish"}),
    ]


@dataclass(frozen=True)
class SetupReport:
    vhost: str
    queues: list[str]
    policies: list[str]


def setup_broker(settings: Settings, catalog: Catalog) -> SetupReport:
    """Declare the network's queues and exchanges and set its policies (idempotent: run it after every
    catalog change). Needs the trusted broker user and the management API (HEURIST_BROKER_ADMIN_URL)."""
    from heurist.access.backends.rabbitmq import RabbitMQAccess

    access = RabbitMQAccess.from_settings(settings)
    access.check_vhost()
    for policy in policies(settings):
        access.api.call("PUT", f"/policies/{quoted(access.vhost)}/{quoted(policy.name)}", json=policy.as_json())
    tiers = [direct_queue(q) for m in catalog.values() for q in (m.queue, m.private_queue)]  # private: issue 16
    queues = [*tiers, direct_queue(settings.ledger_queue)]
    dead = dead_letter_queue()
    with Connection(settings.resolved_broker_url()) as conn:
        channel = conn.channel()
        for queue in [*queues, dead]:
            queue(channel).declare()
        Exchange(STREAM_EXCHANGE, "direct", durable=True)(channel).declare()
    return SetupReport(vhost=access.vhost, queues=[q.name for q in queues] + [DEAD_QUEUE],
                       policies=[p.name for p in policies(settings)])


def declare_inbox(api: ManagementAPI, vhost: str, user: str) -> None:
    """Declare ``user``'s inbox queue, its exchange and their binding (the inbox policy bounds the queue)."""
    v, name, exchange = quoted(vhost), quoted(inbox_name(user)), quoted(inbox_exchange(user))
    if api.get(f"/queues/{v}/{name}") is None:
        api.call("PUT", f"/queues/{v}/{name}", json={"durable": True, "auto_delete": False, "arguments": {}})
    api.call("PUT", f"/exchanges/{v}/{exchange}", json={"type": "direct", "durable": True, "auto_delete": False,
                                                         "internal": False, "arguments": {}})
    api.call("POST", f"/bindings/{v}/e/{exchange}/q/{name}", json={"routing_key": inbox_name(user), "arguments": {}})


def list_inboxes(api: ManagementAPI, vhost: str) -> list[str]:
    """The names of the inbox queues on ``vhost`` (what the ledger consumes)."""
    rows = api.get(f"/queues/{quoted(vhost)}?columns=name") or []
    return sorted(r["name"] for r in rows if str(r.get("name", "")).startswith(INBOX_PREFIX))
