"""Weight attestation: completions keep the miner's signed ``weights_sha256``.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25

Nullable: completions accepted before this revision carry none. The column must be stored for the same
reason as every other signed field: the signature over the completion stays verifiable from the row.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("completions", sa.Column("weights_sha256", sa.String(64), nullable=True))


def downgrade() -> None:
    op.drop_column("completions", "weights_sha256")
