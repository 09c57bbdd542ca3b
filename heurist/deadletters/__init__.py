"""Poison messages are kept, not dropped: the dead-letter queue of the trusted workers.

Miners may publish into the ledger's inbox, so the ledger (and the auditor, for uniformity) meets messages
that are malformed, oversized, undecodable or name a task it does not run. Celery logged such a message
and dropped it; now each one is also kept, so an operator can see who sent what (`heurist broker
dead-letters`). A kept message carries headers saying why:

* ``reason``: ``malformed`` (not a task message, bad arguments, or a field a model refuses), ``oversized``
  (body above ``Settings.max_message_bytes``, refused before it is parsed), ``unknown-task`` (a task name
  the worker does not run, Celery's built-ins included), ``undecodable`` (not JSON, or a content type
  other than JSON) or ``unprocessable`` (a well-formed message its task raised on with an error that no
  retry clears: a bug, a value the database refuses; ``heurist.transient``);
* ``detail``: the first pydantic error, the task name, the size and the limit, or the exception's type and
  text (at most 500 chars);
* ``source``: the queue it came from (the delivery's routing key: ``ledger`` today, ``inbox.<user>`` with
  per-miner inboxes), ``sender``: the broker-validated ``user_id`` when the message has one (RabbitMQ
  refuses a ``user_id`` other than the connection's user), ``dead_at`` (unix time), ``size`` (body bytes)
  and ``task``.

The kept body is the first 4,096 bytes of the original (``EXCERPT_BYTES``), so an 8 MB message costs 4 KB
here. On RabbitMQ ``heurist.dead`` is a fanout exchange into the durable ``dead-letters`` queue, declared
without arguments: ``heurist broker setup`` bounds it by policy (newest kept, oldest dropped) and points the
dead-letter policy of the ledger queue and the inboxes at the same exchange, so a message the broker
dead-letters itself (rejected without requeue) lands next to these, with RabbitMQ's ``x-death`` header
instead of ours (``heurist.deadletters.listing`` reads both). The embedded broker (kombu's SQLite transport)
has no fanout exchanges and no policies: there ``dead-letters`` is a plain, unbounded queue reached by name.
Poison is never requeued or retried: it is kept once and the original acknowledged (or, for a malformed
payload in a task, the task returns). A failure to keep it is logged and never stops the worker.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from celery import Celery
from kombu import Connection, Exchange, Queue

log = logging.getLogger(__name__)

DEAD_EXCHANGE = "heurist.dead"
DEAD_QUEUE = "dead-letters"
EXCERPT_BYTES = 4096  # bytes of each poison message's body kept
DETAIL_CHARS = 500
PUBLISH_RETRY = {"max_retries": 3, "interval_start": 0.1, "interval_step": 0.2, "interval_max": 0.5}


class Reason(StrEnum):
    MALFORMED = "malformed"
    OVERSIZED = "oversized"
    UNKNOWN_TASK = "unknown-task"
    UNDECODABLE = "undecodable"
    UNPROCESSABLE = "unprocessable"  # a task raised on it with a non-transient error (heurist.transient)


@dataclass(frozen=True)
class Poison:
    """One refused message, as kept: why, where from, who sent it, and the start of its body."""

    reason: Reason
    detail: str
    source: str | None
    sender: str | None
    body: bytes  # the whole original body; only EXCERPT_BYTES of it are kept
    task: str | None = None
    dead_at: float = 0.0

    def headers(self) -> dict[str, Any]:
        return {"reason": self.reason.value, "detail": self.detail[:DETAIL_CHARS], "source": self.source or "",
                "sender": self.sender or "", "dead_at": self.dead_at or time.time(), "size": len(self.body),
                "task": (self.task or "")[:200]}


def dead_letter_queue(fanout: bool = True) -> Queue:
    """The durable queue ``dead-letters``, bound to the fanout exchange ``heurist.dead`` (``fanout=False``: on the
    default exchange, for transports without fanout). Miners can neither read nor write either (their
    permissions name neither)."""
    if not fanout:
        return Queue(DEAD_QUEUE, routing_key=DEAD_QUEUE, durable=True)
    return Queue(DEAD_QUEUE, Exchange(DEAD_EXCHANGE, type="fanout", durable=True), routing_key=DEAD_QUEUE,
                 durable=True)


def has_fanout(connection: Connection) -> bool:
    """Whether the connection's transport routes fanout exchanges (RabbitMQ does, kombu's SQL transport not)."""
    return "fanout" in connection.transport.implements.exchange_type


def declare_dead_letters(connection: Connection) -> None:
    """Declare the queue, its exchange and their binding (trusted side, idempotent): ``heurist ledger`` and the
    auditor call it at start, so nothing refused before an operator looks is lost."""
    with connection.channel() as channel:
        dead_letter_queue(has_fanout(connection))(channel).declare()


def as_bytes(body: Any) -> bytes:
    if body is None:
        return b""
    if isinstance(body, bytes | bytearray | memoryview):
        return bytes(body)
    return str(body).encode("utf-8", "surrogateescape")


def source_of(delivery_info: dict[str, Any] | None) -> str | None:
    """The queue a message came from: its routing key (a direct binding's key is the queue's name), else its
    exchange. Never assumed to be ``ledger``."""
    info = delivery_info or {}
    return info.get("routing_key") or info.get("exchange") or None


def keep(app: Celery, poison: Poison) -> bool:
    """Publish ``poison`` into ``dead-letters`` and log it; False (logged) when the broker refused it."""
    log.warning("poison message kept in %s: %s (%s) from %s on %s, %d bytes", DEAD_QUEUE, poison.reason.value,
                poison.detail[:DETAIL_CHARS], poison.sender or "an unknown sender", poison.source or "?",
                len(poison.body))
    try:
        with app.producer_pool.acquire(block=True, timeout=10) as producer:
            fanout = has_fanout(producer.connection)
            producer.publish(poison.body[:EXCERPT_BYTES], exchange=DEAD_EXCHANGE if fanout else "",
                             routing_key=DEAD_QUEUE, declare=[dead_letter_queue(fanout)], headers=poison.headers(),
                             content_type="application/octet-stream", content_encoding="binary",
                             delivery_mode=2, retry=True, retry_policy=PUBLISH_RETRY)
    except Exception:  # the broker is down or refused: the message is still refused, and the worker goes on
        log.exception("could not keep a %s message in %s", poison.reason.value, DEAD_QUEUE)
        return False
    return True


def keep_request(task: Any, reason: Reason, detail: str, body: bytes) -> bool:
    """Keep the message a running task found to be poison (``task`` is a bound Celery task): its source and its
    broker-validated sender come from the task's request."""
    request = task.request
    properties = getattr(request, "properties", None) or {}
    return keep(task.app, Poison(reason=reason, detail=detail, source=source_of(request.delivery_info),
                                 sender=properties.get("user_id"), body=body, task=task.name,
                                 dead_at=time.time()))


def first_error(err: Any) -> str:
    """A pydantic ValidationError's first error as ``field.path: message`` (the field to fix first)."""
    errors = err.errors(include_url=False, include_input=False)
    if not errors:
        return str(err)[:DETAIL_CHARS]
    first = errors[0]
    where = ".".join(str(part) for part in first.get("loc", ())) or "message"
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {first.get('msg', 'invalid')}{more}"
