"""Engines and sessions for the network's database, per backend: SQLite embedded, PostgreSQL in production.

One place builds engines, so every process (ledger, client, gateway, exporter, CLI) gets the same pragmas,
pool pings and driver; ``heurist.db.open_engine`` adds the settings and the migration to head."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker

SQLITE_BUSY_TIMEOUT_MS = 30_000  # ledger workers wait for each other's short write transactions


def normalize_url(url: str | URL) -> URL:
    """Use psycopg 3 for PostgreSQL URLs that name no driver (SQLAlchemy's default, psycopg2, is absent)."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def is_sqlite(url: str | URL) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def _sqlite_pragmas(dbapi_connection: Any, connection_record: Any) -> None:
    """WAL lets readers run beside the one writer; busy_timeout makes writers queue instead of failing;
    SQLite enforces foreign keys only when asked, per connection."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()


def make_engine(url: str | URL, **kwargs: Any) -> Engine:
    """An engine for the database: SQLite gets WAL, a busy timeout and foreign keys; PostgreSQL pings
    pooled connections so a restarted server does not fail the next verification."""
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(parsed, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(parsed, **kwargs)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions whose loaded rows stay readable after commit (views are built after the transaction ends)."""
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session] | Engine) -> Iterator[Session]:
    """One transaction: commit if the block succeeds, roll back if it raises, always close."""
    maker = factory if isinstance(factory, sessionmaker) else session_factory(factory)
    session = maker()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
