"""Rate-limit buckets in the database (``rate_buckets``), so every gateway process shares each key's limit.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "rate_buckets",
        sa.Column("api_key_id", BIG_ID, autoincrement=False, nullable=False),
        sa.Column("tokens", sa.Double(), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("api_key_id", name="pk_rate_buckets"),
        sa.ForeignKeyConstraint(["api_key_id"], ["api_keys.id"], name="fk_rate_buckets_api_key_id_api_keys"),
    )


def downgrade() -> None:
    op.drop_table("rate_buckets")
