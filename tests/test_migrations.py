"""Ledger migrations on SQLite and PostgreSQL: up, down, up again; the ORM matches the migrated schema."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from heurist.db import migrate
from heurist.db.engine import make_engine
from heurist.db.schema import metadata

LEDGER_TABLES = {"miners", "jobs", "completions", "points_entries", "rejections", "audits", "miner_events",
                 "api_keys", "credit_entries", "search_documents", "search_chunks", "miner_uptime",
                 "rate_buckets", "job_resends"}
REPO = Path(__file__).resolve().parents[1]
HEAD = "0017"  # the newest revision: a new migration must be listed here on purpose


def table_names(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def schema_diff(url: str) -> list[object]:
    """What autogenerate would change to make the database match the ORM metadata (types included)."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True,
                                                             "compare_server_default": True})
            return list(compare_metadata(context, metadata))
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade(db_url: str) -> None:
    assert migrate.current(db_url) is None
    migrate.upgrade(db_url)
    assert migrate.current(db_url) == migrate.head() == HEAD
    assert table_names(db_url) >= LEDGER_TABLES
    migrate.upgrade(db_url)  # idempotent: every process start may call it
    migrate.downgrade(db_url, "base")
    assert migrate.current(db_url) is None
    assert table_names(db_url) & LEDGER_TABLES == set()
    migrate.upgrade(db_url)
    assert table_names(db_url) >= LEDGER_TABLES and migrate.current(db_url) == HEAD


def test_orm_metadata_matches_the_migrated_schema(db_url: str) -> None:
    migrate.upgrade(db_url)
    assert schema_diff(db_url) == []


def test_schema_diff_would_notice_a_drift(db_url: str) -> None:
    """The comparison above is not vacuous: a schema missing a table is reported."""
    migrate.upgrade(db_url)
    engine = make_engine(db_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE rejections")
    engine.dispose()
    assert any(op[0] == "add_table" for op in schema_diff(db_url) if isinstance(op, tuple))


def test_concurrent_upgrades_do_not_collide(db_url: str) -> None:
    """A client and a ledger starting together both migrate at start: processes take turns on a database
    lock, threads of one process on a lock around Alembic's process-global state."""
    code = "import sys; from heurist.db.migrate import upgrade; upgrade(sys.argv[1])"
    procs = [subprocess.Popen([sys.executable, "-c", code, db_url], cwd=REPO, stderr=subprocess.PIPE,
                              text=True) for _ in range(3)]
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(lambda _: migrate.upgrade(db_url), range(3)))
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    assert migrate.current(db_url) == HEAD and schema_diff(db_url) == []


def test_migrations_are_found_without_the_repo_as_cwd(db_url: str, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert (migrate.script_location() / "env.py").is_file()
    assert (migrate.script_location() / "versions" / "0001_spine.py").is_file()
    migrate.upgrade(db_url)
    assert migrate.current(db_url) == HEAD


def test_alembic_command_line_from_the_repo(sqlite_url: str) -> None:
    """`alembic -x url=... upgrade head` with the repo's alembic.ini, as an operator would run it."""
    env = {**os.environ, "HEURIST_DATABASE_URL": "sqlite:////nonexistent/dir/must-not-be-used.sqlite"}
    alembic = [sys.executable, "-m", "alembic", "-c", str(REPO / "alembic.ini"), "-x", f"url={sqlite_url}"]
    for args in (["upgrade", "head"], ["downgrade", "base"], ["upgrade", "head"]):
        done = subprocess.run([*alembic, *args], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr
    assert migrate.current(sqlite_url) == HEAD
