"""Queue depth per watched queue, from RabbitMQ or the embedded SQLite broker, without admin rights.

RabbitMQ: a passive ``queue_declare`` returns the ready-message count (unacknowledged messages, the job a
miner is running, are not counted); a queue not declared yet answers 404, which is depth 0, and costs the
channel, so a fresh one is opened. The embedded broker (kombu's SQLAlchemy transport) would *create* a
queue on a passive declare, so there the count is one query on kombu's own tables instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from kombu import Connection

from heurist import broker
from heurist.catalog import Catalog
from heurist.settings import is_amqp

UNROUTED_QUEUE = "unrouted"  # celeryconfig.task_default_queue: a job sent without a queue lands here


@dataclass(frozen=True)
class WatchedQueue:
    """A queue and what it is for: ``role`` is job, private, audit, ledger or unrouted."""

    name: str
    role: str
    model: str = ""
    tier: str = ""


def watched_queues(catalog: Catalog, ledger_queue: str, audit_prefix: str) -> list[WatchedQueue]:
    """Every queue the network uses: each model's job, private and audit queue, the ledger's, ``unrouted``."""
    from heurist.audit.middleware import audit_queue

    rows: list[WatchedQueue] = []
    for spec in sorted(catalog.values(), key=lambda s: (s.vram.gb, s.id)):
        tier = spec.vram.value
        rows.append(WatchedQueue(spec.queue, "job", spec.id, tier))
        rows.append(WatchedQueue(spec.private_queue, "private", spec.id, tier))
        rows.append(WatchedQueue(audit_queue(audit_prefix, spec.id), "audit", spec.id, tier))
    rows.append(WatchedQueue(ledger_queue, "ledger"))
    rows.append(WatchedQueue(UNROUTED_QUEUE, "unrouted"))
    return rows


class QueueDepths:
    """Reads ready-message counts; keeps one broker connection across scrapes and reopens it on failure."""

    def __init__(self, broker_url: str, connect_timeout_s: float = 3.0) -> None:
        broker.register()
        self.url = broker_url
        self.connect_timeout_s = connect_timeout_s
        self._conn: Connection | None = None

    def read(self, names: Sequence[str]) -> dict[str, int]:
        """Depth of each queue in ``names`` (0 for one that does not exist yet); raises if the broker is down."""
        try:
            return self._read(names)
        except Exception:
            self.close()  # a stale connection (broker restarted): one retry on a fresh one
            return self._read(names)

    def _read(self, names: Sequence[str]) -> dict[str, int]:
        if self._conn is None:
            self._conn = Connection(self.url, connect_timeout=self.connect_timeout_s)
            self._conn.ensure_connection(max_retries=1)
        if is_amqp(self.url):
            return _amqp_depths(self._conn, names)
        return _sqlalchemy_depths(self._conn.default_channel, names)

    def close(self) -> None:
        if self._conn is not None:
            with suppress(Exception):  # closing a broken connection may raise; it is dropped either way
                self._conn.release()
            self._conn = None


def _amqp_depths(conn: Connection, names: Iterable[str]) -> dict[str, int]:
    from amqp.exceptions import NotFound

    depths: dict[str, int] = {}
    channel: Any = conn.channel()
    try:
        for name in names:
            try:
                depths[name] = channel.queue_declare(queue=name, passive=True).message_count
            except NotFound:  # never declared: nothing waits on it; the server closed this channel
                depths[name] = 0
                channel = conn.channel()
    finally:
        channel.close()
    return depths


def _sqlalchemy_depths(channel: Any, names: Sequence[str]) -> dict[str, int]:
    """One query on kombu's queue and message tables: visible messages are the ones waiting."""
    from sqlalchemy import and_, func, select

    queue_cls, message_cls = channel.queue_cls, channel.message_cls
    stmt = (
        select(queue_cls.name, func.count(message_cls.id))
        .select_from(queue_cls)
        .outerjoin(message_cls, and_(message_cls.queue_id == queue_cls.id, message_cls.visible.is_(True)))
        .where(queue_cls.name.in_(list(names)))
        .group_by(queue_cls.name)
    )
    session = channel.session
    try:
        found = {name: int(count) for name, count in session.execute(stmt)}
    finally:
        session.rollback()  # end the read transaction so the next scrape sees new messages
    return {name: found.get(name, 0) for name in names}
