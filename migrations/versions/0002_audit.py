"""Audit: audits, miner_events (both append-only) and the reporting views.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25

New points entry kinds (escrow, escrow_debit, escrow_release, clawback, escrow_clawback) need no DDL:
``points_entries.kind`` is a plain string. The views are plain SQL that SQLite and PostgreSQL both run
(CTEs, window functions, CASE; no FLOOR, which SQLite may lack, and no dialect casts). Their constants
are frozen here on purpose, as migrations must be: ``EPOCH_SECONDS`` and ``RECENT_AUDITS`` in
``heurist.ledger.audit_service`` document them and a test checks they agree.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
APPEND_ONLY_TABLES = ("audits", "miner_events")
EPOCH_SECONDS = 86400  # one epoch = one UTC day of unix seconds
RECENT_AUDITS = 10  # a failure among a miner's last this-many audits flags it

# floor(created_at / EPOCH_SECONDS) in SQL both databases run: CAST truncates on SQLite and rounds on
# PostgreSQL; either way, subtracting 1 when the cast came out above the quotient gives the floor.
_QUOTIENT = f"(created_at / {EPOCH_SECONDS}.0)"
_EPOCH = (f"(CAST({_QUOTIENT} AS BIGINT) - CASE WHEN CAST({_QUOTIENT} AS BIGINT) > {_QUOTIENT} "
          "THEN 1 ELSE 0 END)")


def _sum_of(kinds: tuple[str, ...]) -> str:
    listed = ", ".join(f"'{k}'" for k in kinds)
    return f"COALESCE(SUM(CASE WHEN kind IN ({listed}) THEN amount_micro ELSE 0 END), 0)"


V_POINTS_PER_MINER_EPOCH = f"""
CREATE VIEW v_points_per_miner_epoch AS
SELECT miner_address, epoch,
       COALESCE(SUM(amount_micro), 0) AS total_micro,
       {_sum_of(("job_credit", "escrow_release"))} AS credited_micro,
       {_sum_of(("escrow", "escrow_debit"))} AS escrowed_micro,
       {_sum_of(("clawback", "escrow_clawback"))} AS clawed_back_micro,
       COUNT(*) AS entries
FROM (SELECT miner_address, kind, amount_micro, {_EPOCH} AS epoch FROM points_entries) AS e
GROUP BY miner_address, epoch
"""

V_AUDIT_OUTCOMES = """
CREATE VIEW v_audit_outcomes AS
SELECT miner_address,
       COUNT(*) AS audits,
       SUM(CASE WHEN outcome = 'passed' THEN 1 ELSE 0 END) AS passed,
       SUM(CASE WHEN outcome = 'failed' THEN 1 ELSE 0 END) AS failed,
       MAX(audited_at) AS last_audit_at
FROM audits
GROUP BY miner_address
"""


def _latest_event(name: str, on: str, off: str) -> str:
    """Miners whose latest ``on``/``off`` event is ``on`` (ids order events)."""
    return f"""{name} AS (
    SELECT e.miner_address FROM miner_events e
    WHERE e.kind = '{on}' AND e.id = (SELECT MAX(e2.id) FROM miner_events e2
                                     WHERE e2.miner_address = e.miner_address AND e2.kind IN ('{on}', '{off}'))
)"""


V_FLAGGED_MINERS = f"""
CREATE VIEW v_flagged_miners AS
WITH ranked AS (
    SELECT miner_address, outcome,
           ROW_NUMBER() OVER (PARTITION BY miner_address ORDER BY audited_at DESC, id DESC) AS rn
    FROM audits
),
counts AS (
    SELECT miner_address, COUNT(*) AS audits,
           SUM(CASE WHEN outcome = 'failed' THEN 1 ELSE 0 END) AS failed,
           SUM(CASE WHEN outcome = 'failed' AND rn <= {RECENT_AUDITS} THEN 1 ELSE 0 END) AS recent_failed
    FROM ranked GROUP BY miner_address
),
{_latest_event("banned", "banned", "unbanned")},
{_latest_event("flagged", "flagged", "unflagged")}
SELECT m.address AS miner_address,
       COALESCE(c.audits, 0) AS audits,
       COALESCE(c.failed, 0) AS failed,
       COALESCE(c.recent_failed, 0) AS recent_failed,
       CASE WHEN b.miner_address IS NULL THEN 0 ELSE 1 END AS banned,
       CASE WHEN f.miner_address IS NULL THEN 0 ELSE 1 END AS flagged
FROM miners m
LEFT JOIN counts c ON c.miner_address = m.address
LEFT JOIN banned b ON b.miner_address = m.address
LEFT JOIN flagged f ON f.miner_address = m.address
WHERE COALESCE(c.recent_failed, 0) > 0 OR b.miner_address IS NOT NULL OR f.miner_address IS NOT NULL
"""

VIEWS = {
    "v_points_per_miner_epoch": V_POINTS_PER_MINER_EPOCH,
    "v_audit_outcomes": V_AUDIT_OUTCOMES,
    "v_flagged_miners": V_FLAGGED_MINERS,
}


def _dialect() -> str:
    return op.get_context().dialect.name


def _create_audits() -> None:
    op.create_table(
        "audits",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(64), nullable=False),
        sa.Column("miner_address", sa.String(42), nullable=False),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("reason", sa.String(32), nullable=True),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("audited_at", sa.Double(), nullable=False),
        sa.Column("auditor", sa.String(255), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name="fk_audits_job_id_jobs"),
        sa.ForeignKeyConstraint(["miner_address"], ["miners.address"], name="fk_audits_miner_address_miners"),
        sa.PrimaryKeyConstraint("id", name="pk_audits"),
        sa.UniqueConstraint("job_id", "auditor", name="uq_audits_job_id_auditor"),
    )
    op.create_index("ix_audits_job_id", "audits", ["job_id"])
    op.create_index("ix_audits_miner_address", "audits", ["miner_address"])


def _create_miner_events() -> None:
    op.create_table(
        "miner_events",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("miner_address", sa.String(42), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.ForeignKeyConstraint(["miner_address"], ["miners.address"],
                                name="fk_miner_events_miner_address_miners"),
        sa.PrimaryKeyConstraint("id", name="pk_miner_events"),
    )
    op.create_index("ix_miner_events_miner_address", "miner_events", ["miner_address"])


def _create_append_only_triggers() -> None:
    """Audits and miner events are history: refuse UPDATE and DELETE in the database itself."""
    if _dialect() == "postgresql":
        op.execute(
            "CREATE FUNCTION heurist_append_only() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION '% is append-only: add a new row instead', TG_TABLE_NAME; END $$"
        )
        for table in APPEND_ONLY_TABLES:
            op.execute(f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
                       "FOR EACH ROW EXECUTE FUNCTION heurist_append_only()")
    elif _dialect() == "sqlite":
        for table in APPEND_ONLY_TABLES:
            for event in ("UPDATE", "DELETE"):
                op.execute(f"CREATE TRIGGER {table}_no_{event.lower()} BEFORE {event} ON {table} "
                           f"BEGIN SELECT RAISE(ABORT, '{table} is append-only: add a new row instead'); END")


def _drop_append_only_triggers() -> None:
    if _dialect() == "postgresql":
        for table in APPEND_ONLY_TABLES:
            op.execute(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}")
        op.execute("DROP FUNCTION IF EXISTS heurist_append_only()")
    elif _dialect() == "sqlite":
        for table in APPEND_ONLY_TABLES:
            for event in ("update", "delete"):
                op.execute(f"DROP TRIGGER IF EXISTS {table}_no_{event}")


def upgrade() -> None:
    _create_audits()
    _create_miner_events()
    _create_append_only_triggers()
    for sql in VIEWS.values():
        op.execute(sql)


def downgrade() -> None:
    for name in reversed(VIEWS):
        op.execute(f"DROP VIEW IF EXISTS {name}")
    _drop_append_only_triggers()
    op.drop_table("miner_events")
    op.drop_table("audits")
