"""Uptime: heartbeat slots per miner per epoch (``miner_uptime``).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25

One row per miner per epoch, updated in place by one upsert per heartbeat (not one row per heartbeat: at
30 s, a thousand miners would add 2.9 million rows a day).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "miner_uptime",
        sa.Column("address", sa.String(42), sa.ForeignKey("miners.address", name="fk_miner_uptime_address_miners"),
                  nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("slots", sa.Integer(), nullable=False),
        sa.Column("last_slot", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("address", "epoch", name="pk_miner_uptime"),
    )


def downgrade() -> None:
    op.drop_table("miner_uptime")
