"""Search documents belong to the key that ingested them, or to the public corpus (issue 13, finding 5).

``owner_key_id``: the API key that ingested the document (None: not ingested through a key); ``public``: the
corpus every key searches (the operator's `heurist search ingest`, the demo corpus). Documents already stored
keep their text but are made public only if they did not come through the API: an API-ingested document's key
was never recorded, so it is hidden rather than shown to every tenant.

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | Sequence[str] | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("search_documents") as batch:
        batch.add_column(sa.Column("owner_key_id", BIG_ID, nullable=True))
        batch.add_column(sa.Column("public", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.create_index("ix_search_documents_owner_key_id", ["owner_key_id"])
    op.execute("UPDATE search_documents SET public = (source <> 'api')")


def downgrade() -> None:
    with op.batch_alter_table("search_documents") as batch:
        batch.drop_index("ix_search_documents_owner_key_id")
        batch.drop_column("public")
        batch.drop_column("owner_key_id")
