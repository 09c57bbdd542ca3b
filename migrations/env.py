"""Alembic environment for the network's database (every package's tables: ``heurist.db.schema``).

The URL comes from, in order: ``config.attributes["url"]`` (``heurist.db.migrate``), ``-x url=...`` on
the alembic command line, then heurist settings. A caller may also pass an open connection in
``config.attributes["connection"]``. SQLite migrations run in batch mode (it cannot ALTER most things).
"""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection

from heurist.db.engine import is_sqlite, make_engine, normalize_url
from heurist.db.schema import metadata

config = context.config

if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def database_url() -> str:
    """Where to migrate: explicit attribute, then ``-x url=``, then heurist settings (read only now)."""
    url = config.attributes.get("url") or context.get_x_argument(as_dictionary=True).get("url")
    if not url:
        from heurist.settings import get_settings

        url = get_settings().resolved_database_url()
    return normalize_url(url).render_as_string(hide_password=False)


def run_migrations_offline() -> None:
    """Emit SQL instead of running it (``alembic upgrade head --sql``)."""
    url = database_url()
    context.configure(url=url, target_metadata=metadata, literal_binds=True, render_as_batch=is_sqlite(url),
                      dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


MIGRATION_LOCK_ID = 0x6865757269737400  # "heurist\0": the PostgreSQL advisory lock migrations hold


def serialize(connection: Connection) -> None:
    """Take a database-wide lock first, so processes starting together (client, ledger) migrate one at a
    time: the second waits, then finds the schema at head and does nothing."""
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_ID})")
    elif connection.dialect.name == "sqlite" and not connection.connection.dbapi_connection.in_transaction:  # type: ignore[union-attr]
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def run_with(connection: Connection) -> None:
    serialize(connection)
    context.configure(connection=connection, target_metadata=metadata,
                      render_as_batch=connection.dialect.name == "sqlite", compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        run_with(connection)
        return
    engine = make_engine(database_url(), poolclass=pool.NullPool)
    try:
        with engine.begin() as conn:
            run_with(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
