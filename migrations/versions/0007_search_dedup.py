"""Search documents carry the sha256 of their title, text and url, unique: ingesting one again finds it.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-25

Nullable: documents ingested before this revision have none (both databases allow many NULLs in a
unique column), so they stay as they are.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("search_documents") as batch:
        batch.add_column(sa.Column("content_sha256", sa.String(64), nullable=True))
        batch.create_unique_constraint("uq_search_documents_content_sha256", ["content_sha256"])


def downgrade() -> None:
    with op.batch_alter_table("search_documents") as batch:
        batch.drop_constraint("uq_search_documents_content_sha256", type_="unique")
        batch.drop_column("content_sha256")
