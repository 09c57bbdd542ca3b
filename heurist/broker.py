"""The embedded broker: kombu's SQLAlchemy transport on SQLite, tuned for several local processes.

kombu's own ``sqla`` transport polls once a second and hands every transport option (``polling_interval``
included) to ``create_engine``, so it can be neither sped up nor told to wait on SQLite's write lock.
This transport polls every 0.1 s and opens SQLite in WAL mode with a busy timeout, so the client, the
ledger and the miner share one file without "database is locked" errors. URL: ``embedded+sqlite:///PATH``.

A Celery worker on a polling transport looks at its shutdown flag only between ``drain_events`` calls,
which it makes with a 2 s timeout; this transport returns after at most ``max_drain_s`` (an empty poll
raises ``socket.timeout``, which the worker's loop expects), so a stopped worker exits within 0.25 s of
its signal instead of 2 s.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import sqlalchemy as kombu_sqla
from sqlalchemy import create_engine, event
from sqlalchemy.exc import IntegrityError

SCHEME = "embedded"


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


class SQLiteChannel(kombu_sqla.Channel):
    def _engine_from_config(self) -> Any:
        engine = create_engine(self.connection.client.hostname)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine

    def _get_or_create(self, queue: str) -> Any:
        """kombu looks for the queue's row, then inserts it, guarded by a lock of its own process only: when
        two processes declare a new queue at once (a miner and the auditor starting), the later insert hits
        the unique name and that process died. The row the other process made is the one we wanted."""
        try:
            return super()._get_or_create(queue)
        except IntegrityError:
            self.session.rollback()
            return self.session.query(self.queue_cls).filter(self.queue_cls.name == queue).one()


class SQLiteTransport(kombu_sqla.Transport):
    Channel = SQLiteChannel
    polling_interval = 0.1
    max_drain_s = 0.25

    def drain_events(self, connection: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        """Wait at most ``max_drain_s`` of a caller's timeout (``None`` still blocks until a message)."""
        if timeout is not None:
            timeout = min(timeout, self.max_drain_s)
        return super().drain_events(connection, timeout=timeout, **kwargs)


def register() -> None:
    """Make ``embedded+sqlite://`` URLs resolve to this transport (idempotent)."""
    TRANSPORT_ALIASES[SCHEME] = f"{__name__}:SQLiteTransport"
