"""The spine: miners, jobs, completions, the append-only points ledger, rejections.

Revision ID: 0001
Revises:
Create Date: 2025-01-01

Hand-written and portable (SQLite and PostgreSQL). Only the append-only trigger differs per dialect.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite auto-increments INTEGER PKs only
APPEND_ONLY_MESSAGE = "points_entries is append-only: add a correcting entry instead"


def _dialect() -> str:
    return op.get_context().dialect.name


def _create_miners() -> None:
    op.create_table(
        "miners",
        sa.Column("address", sa.String(42), nullable=False),
        sa.Column("first_seen", sa.Double(), nullable=False),
        sa.Column("last_seen", sa.Double(), nullable=False),
        sa.Column("models", sa.JSON(), nullable=False),
        sa.Column("device", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("address", name="pk_miners"),
    )


def _create_jobs() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("model_id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("queue", sa.String(255), nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("output_key", sa.String(1024), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("deadline_at", sa.Double(), nullable=False),
        sa.Column("miner_address", sa.String(42), nullable=True),
        sa.Column("finished_at", sa.Double(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["miner_address"], ["miners.address"], name="fk_jobs_miner_address_miners"),
        sa.PrimaryKeyConstraint("id", name="pk_jobs"),
    )
    op.create_index("ix_jobs_state", "jobs", ["state"])
    op.create_index("ix_jobs_miner_address", "jobs", ["miner_address"])


def _create_completions() -> None:
    op.create_table(
        "completions",
        sa.Column("job_id", sa.String(64), nullable=False),
        sa.Column("miner_address", sa.String(42), nullable=False),
        sa.Column("output_sha256", sa.String(64), nullable=False),
        sa.Column("output_bytes", sa.BigInteger(), nullable=False),
        sa.Column("content_type", sa.Text(), nullable=False),
        sa.Column("input_tokens", sa.Integer(), nullable=False),
        sa.Column("output_tokens", sa.Integer(), nullable=False),
        sa.Column("timings", sa.JSON(), nullable=False),
        sa.Column("device", sa.JSON(), nullable=False),
        sa.Column("finished_at", sa.Double(), nullable=False),
        sa.Column("signature", sa.String(132), nullable=False),
        sa.Column("received_at", sa.Double(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name="fk_completions_job_id_jobs"),
        sa.ForeignKeyConstraint(["miner_address"], ["miners.address"],
                                name="fk_completions_miner_address_miners"),
        sa.PrimaryKeyConstraint("job_id", name="pk_completions"),
    )
    op.create_index("ix_completions_miner_address", "completions", ["miner_address"])


def _create_points_entries() -> None:
    op.create_table(
        "points_entries",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("idempotency_key", sa.String(255), nullable=False),
        sa.Column("miner_address", sa.String(42), nullable=False),
        sa.Column("job_id", sa.String(64), nullable=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("amount_micro", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name="fk_points_entries_job_id_jobs"),
        sa.ForeignKeyConstraint(["miner_address"], ["miners.address"],
                                name="fk_points_entries_miner_address_miners"),
        sa.PrimaryKeyConstraint("id", name="pk_points_entries"),
        sa.UniqueConstraint("idempotency_key", name="uq_points_entries_idempotency_key"),
    )
    op.create_index("ix_points_entries_miner_address", "points_entries", ["miner_address"])
    op.create_index("ix_points_entries_job_id", "points_entries", ["job_id"])


def _create_rejections() -> None:
    op.create_table(
        "rejections",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(64), nullable=False),
        sa.Column("miner_address", sa.String(42), nullable=True),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("received_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_rejections"),
    )
    op.create_index("ix_rejections_job_id", "rejections", ["job_id"])


def _create_append_only_trigger() -> None:
    """Refuse UPDATE and DELETE on points_entries in the database itself, whatever code connects."""
    if _dialect() == "postgresql":
        op.execute(
            "CREATE FUNCTION points_entries_append_only() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN RAISE EXCEPTION '{APPEND_ONLY_MESSAGE}'; END $$"
        )
        op.execute(
            "CREATE TRIGGER points_entries_append_only BEFORE UPDATE OR DELETE ON points_entries "
            "FOR EACH ROW EXECUTE FUNCTION points_entries_append_only()"
        )
    elif _dialect() == "sqlite":
        for event in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER points_entries_no_{event.lower()} BEFORE {event} ON points_entries "
                f"BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY_MESSAGE}'); END"
            )


def _drop_append_only_trigger() -> None:
    if _dialect() == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS points_entries_append_only ON points_entries")
        op.execute("DROP FUNCTION IF EXISTS points_entries_append_only()")
    elif _dialect() == "sqlite":
        for event in ("update", "delete"):
            op.execute(f"DROP TRIGGER IF EXISTS points_entries_no_{event}")


def upgrade() -> None:
    _create_miners()
    _create_jobs()
    _create_completions()
    _create_points_entries()
    _create_rejections()
    _create_append_only_trigger()


def downgrade() -> None:
    _drop_append_only_trigger()
    op.drop_table("rejections")
    op.drop_table("points_entries")
    op.drop_table("completions")
    op.drop_table("jobs")
    op.drop_table("miners")
