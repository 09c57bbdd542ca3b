"""Each miner key is bound to the broker user (one operator) that first registered it: ``miners.broker_user``.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("miners", sa.Column("broker_user", sa.String(length=128), nullable=True))
    op.create_index("ix_miners_broker_user", "miners", ["broker_user"])


def downgrade() -> None:
    """Plain ALTER TABLE … DROP COLUMN (SQLite 3.35+): a batch rebuild of ``miners`` would break the
    ``v_flagged_miners`` view over it."""
    op.drop_index("ix_miners_broker_user", table_name="miners")
    op.execute("ALTER TABLE miners DROP COLUMN broker_user")
