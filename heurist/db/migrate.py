"""Migrate the database (every package's tables, ``heurist.db.schema``) with Alembic, programmatically.

The scripts are found through the ``migrations`` package (shipped in the wheel), never the working
directory, so ``heurist db upgrade`` works from any directory and from an installed package.
"""

from __future__ import annotations

import threading
from importlib import resources
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from heurist.db.engine import make_engine

# Alembic's ``context``/``op`` proxies are process-global: two threads migrating at once would clobber
# each other. Threads take turns here; processes take turns on a database lock (migrations/env.py).
_ALEMBIC_LOCK = threading.Lock()


def script_location() -> Path:
    """The directory of the ``migrations`` package (env.py, versions/)."""
    return Path(str(resources.files("migrations")))


def alembic_config(url: str) -> Config:
    """An Alembic config without an ini file: script location from the package, URL given here."""
    config = Config()
    config.set_main_option("script_location", str(script_location()))
    config.set_main_option("path_separator", "os")
    config.attributes["url"] = url
    config.attributes["configure_logger"] = False
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database to ``revision`` (default: newest). Idempotent; safe at every process start."""
    with _ALEMBIC_LOCK:
        command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    """Take the database back to ``revision`` (``base`` drops every table)."""
    with _ALEMBIC_LOCK:
        command.downgrade(alembic_config(url), revision)


def current(url: str) -> str | None:
    """The revision the database is at, None if it was never migrated."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def head() -> str | None:
    """The newest revision the shipped scripts define."""
    return ScriptDirectory.from_config(alembic_config("")).get_current_head()
