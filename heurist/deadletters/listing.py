"""Read the dead-letter queue without consuming it (``heurist broker dead-letters``), and purge it.

RabbitMQ: ``basic_get`` without acknowledging, then the channel closes and the broker puts every message
back where it was (classic queues keep their order). The embedded SQLite broker would put them back at the
end instead, so there the rows are read through kombu's own models of its transport (``queue_cls``,
``message_cls``), read-only. Either way a listing changes nothing, and the ledger can keep adding to the
queue meanwhile.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from amqp.exceptions import NotFound
from kombu import Connection

from heurist import broker
from heurist.deadletters import DEAD_QUEUE, as_bytes, dead_letter_queue, has_fanout
from heurist.settings import Settings, is_amqp

EXCERPT_CHARS = 120  # of the kept body, in a listing


@dataclass(frozen=True)
class DeadLetter:
    """One kept poison message, as listed."""

    reason: str
    detail: str
    source: str
    sender: str
    time: str  # ISO 8601, UTC
    size: int  # bytes of the original body
    task: str
    excerpt: str  # the start of the kept body, undecodable bytes replaced

    @classmethod
    def of(cls, headers: dict[str, Any] | None, properties: dict[str, Any] | None, body: bytes) -> DeadLetter:
        """From our headers (``heurist.deadletters.Poison``), or RabbitMQ's ``x-death`` when the broker
        dead-lettered the message itself (a consumer rejected it without requeue, or it expired). A message with
        ``x-death`` came from a miner as it was: its own ``reason``/``sender`` headers are not believed."""
        h, sender = headers or {}, str((properties or {}).get("user_id") or "")
        if isinstance(h.get("x-death"), list) and h["x-death"] and isinstance(h["x-death"][0], dict):
            death = h["x-death"][0]
            when = death.get("time")
            return cls(reason=f"broker-{death.get('reason', '?')}", detail=f"dead-lettered by the broker "
                       f"({death.get('count', 1)} time(s)); no reason recorded", source=str(death.get("queue", "")),
                       sender=sender, time=when.astimezone(UTC).isoformat(timespec="seconds")
                       if isinstance(when, datetime) else str(when or ""), size=len(body),
                       task=str(h.get("task", "")), excerpt=body[:EXCERPT_CHARS].decode("utf-8", "replace"))
        dead_at = _number(h.get("dead_at"), 0.0)
        return cls(reason=str(h.get("reason", "?")), detail=str(h.get("detail", "")),
                   source=str(h.get("source", "")), sender=str(h.get("sender", "")) or sender,
                   time=datetime.fromtimestamp(dead_at, UTC).isoformat(timespec="seconds") if dead_at else "",
                   size=int(_number(h.get("size"), len(body))), task=str(h.get("task", "")),
                   excerpt=body[:EXCERPT_CHARS].decode("utf-8", "replace"))

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _number(value: Any, default: float) -> float:
    """A header read as a number; ``default`` when it is missing or not one (headers are not trusted input)."""
    try:
        return float(value) if value not in (None, "") else default
    except (TypeError, ValueError):
        return default


@dataclass(frozen=True)
class DeadLetters:
    """The first ``limit`` kept messages, oldest first, and how many the queue holds."""

    total: int
    letters: list[DeadLetter]


@contextmanager
def _connection(settings: Settings) -> Iterator[Connection]:
    broker.register()
    with Connection(settings.resolved_broker_url(), connect_timeout=10) as conn:
        conn.ensure_connection(max_retries=1)
        yield conn


def peek(settings: Settings, limit: int = 50) -> DeadLetters:
    """Up to ``limit`` kept messages, oldest first, leaving every one in the queue."""
    with _connection(settings) as conn:
        if is_amqp(settings.resolved_broker_url()):
            return _peek_amqp(conn, limit)
        return _peek_virtual(conn, limit)


def purge(settings: Settings) -> int:
    """Delete every kept message; how many there were."""
    with _connection(settings) as conn, conn.channel() as channel:
        dead_letter_queue(has_fanout(conn))(channel).declare()
        return int(channel.queue_purge(DEAD_QUEUE) or 0)


def _peek_amqp(conn: Connection, limit: int) -> DeadLetters:
    channel = conn.channel()
    try:
        try:
            total = int(channel.queue_declare(DEAD_QUEUE, passive=True).message_count)
        except NotFound:  # nothing was ever kept: no trusted worker has declared it yet
            return DeadLetters(0, [])
        queue = dead_letter_queue()(channel)
        letters: list[DeadLetter] = []
        while len(letters) < limit and (message := queue.get(no_ack=False)) is not None:
            letters.append(DeadLetter.of(message.headers, message.properties, as_bytes(message.body)))
        return DeadLetters(max(total, len(letters)), letters)
    finally:
        channel.close()  # unacknowledged: RabbitMQ requeues them in place


def _peek_virtual(conn: Connection, limit: int) -> DeadLetters:
    """kombu's SQL transport: read the visible rows of the queue, in the order the transport delivers them."""
    channel: Any = conn.default_channel
    session, queues, messages = channel.session, channel.queue_cls, channel.message_cls
    queue = session.query(queues).filter(queues.name == DEAD_QUEUE).first()
    if queue is None:
        return DeadLetters(0, [])
    visible = session.query(messages).filter(messages.queue_id == queue.id, messages.visible.is_(True))
    rows = visible.order_by(messages.sent_at, messages.id).limit(limit).all()
    letters: list[DeadLetter] = []
    for row in rows:
        payload = json.loads(row.payload)
        body = payload.get("body") or ""
        if (payload.get("properties") or {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        letters.append(DeadLetter.of(payload.get("headers"), payload.get("properties"), as_bytes(body)))
    total = visible.count()
    session.rollback()  # read-only: release SQLite's snapshot
    return DeadLetters(total, letters)
