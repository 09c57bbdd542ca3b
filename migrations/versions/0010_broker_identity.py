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
    with op.batch_alter_table("miners") as batch:
        batch.add_column(sa.Column("broker_user", sa.String(length=128), nullable=True))
        batch.create_index("ix_miners_broker_user", ["broker_user"])


def downgrade() -> None:
    with op.batch_alter_table("miners") as batch:
        batch.drop_index("ix_miners_broker_user")
        batch.drop_column("broker_user")
