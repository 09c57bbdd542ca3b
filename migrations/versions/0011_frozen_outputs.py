"""Frozen outputs: completions record where the credited bytes were copied and when the store got them.

Revision ID: 0011
Revises: 0009
Create Date: 2026-11-30

``frozen_key`` is the server-side copy of exactly the verified bytes, under a key no presigned URL can
write (``heurist.storage.freeze``): clients and auditors read it. ``uploaded_at`` is the store's
LastModified of the output, the clock lateness is judged by. Both nullable: completions accepted before
this revision have neither, and readers fall back to the job's ``output_key`` (checked against the sha256).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("completions", sa.Column("frozen_key", sa.String(1024), nullable=True))
    op.add_column("completions", sa.Column("uploaded_at", sa.Double(), nullable=True))


def downgrade() -> None:
    op.drop_column("completions", "uploaded_at")
    op.drop_column("completions", "frozen_key")
