"""Re-sends of stranded jobs: ``jobs.resends`` (the count the sweep's conditional UPDATE checks) and the
append-only ``job_resends`` history, one row per re-send, unique per (job, attempt).

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | Sequence[str] | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.add_column("jobs", sa.Column("resends", sa.Integer(), nullable=False, server_default="0"))
    op.create_table(
        "job_resends",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(64), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("sent_at", sa.Double(), nullable=False),
        sa.Column("previous_deadline_at", sa.Double(), nullable=False),
        sa.Column("deadline_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_job_resends"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name="fk_job_resends_job_id_jobs"),
        sa.UniqueConstraint("job_id", "attempt", name="uq_job_resends_job_id_attempt"),
    )
    op.create_index("ix_job_resends_job_id", "job_resends", ["job_id"])


def downgrade() -> None:
    op.drop_index("ix_job_resends_job_id", table_name="job_resends")
    op.drop_table("job_resends")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("resends")
