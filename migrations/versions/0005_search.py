"""Search: search_documents and their search_chunks (text + float32 embedding bytes).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25

Embeddings are LargeBinary on both databases (pgvector is not on SQLite); search is exact cosine
similarity in memory, see heurist/search/index.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "search_documents",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("title", sa.String(500), nullable=False),
        sa.Column("url", sa.Text(), nullable=True),
        sa.Column("source", sa.String(500), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_search_documents"),
    )
    op.create_table(
        "search_chunks",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("document_id", BIG_ID, nullable=False),
        sa.Column("ordinal", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("embedding", sa.LargeBinary(), nullable=False),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_search_chunks"),
        sa.ForeignKeyConstraint(["document_id"], ["search_documents.id"],
                                name="fk_search_chunks_document_id_search_documents"),
    )
    op.create_index("ix_search_chunks_document_id", "search_chunks", ["document_id"])


def downgrade() -> None:
    op.drop_table("search_chunks")
    op.drop_table("search_documents")
