"""The database every trusted package shares: the declarative base (``base``), engines and sessions
(``engine``), Alembic migrations (``migrate``) and the whole schema (``schema``).

``open_engine`` is the one way a process opens the database from its settings: the SQLite data directory
created, the schema migrated to head (idempotent, so every process start may do it), then an engine.
"""

from __future__ import annotations

from sqlalchemy import Engine

from heurist.db.engine import is_sqlite, make_engine
from heurist.settings import Settings


def open_engine(settings: Settings, migrate: bool = True) -> Engine:
    """An engine on the configured database, migrated to the newest schema first unless ``migrate`` is off."""
    url = settings.resolved_database_url()
    if is_sqlite(url):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    if migrate:
        from heurist.db.migrate import upgrade  # Alembic (~0.1 s) only for callers that migrate

        upgrade(url)
    return make_engine(url)


__all__ = ["open_engine"]
