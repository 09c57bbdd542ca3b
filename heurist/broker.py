"""The embedded broker: kombu's SQLAlchemy transport on SQLite, tuned for several local processes.

kombu's own ``sqla`` transport polls once a second and hands every transport option (``polling_interval``
included) to ``create_engine``, so it can be neither sped up nor told to wait on SQLite's write lock.
This transport polls every 0.1 s and opens SQLite in WAL mode with a busy timeout, so the client, the
ledger and the miner share one file without "database is locked" errors. URL: ``embedded+sqlite:///PATH``.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import sqlalchemy as kombu_sqla
from sqlalchemy import create_engine, event

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


class SQLiteTransport(kombu_sqla.Transport):
    Channel = SQLiteChannel
    polling_interval = 0.1


def register() -> None:
    """Make ``embedded+sqlite://`` URLs resolve to this transport (idempotent)."""
    TRANSPORT_ALIASES[SCHEME] = f"{__name__}:SQLiteTransport"
