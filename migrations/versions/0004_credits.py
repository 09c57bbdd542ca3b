"""Credits: api_keys (hashed keys with a balance) and credit_entries (append-only history).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25

``api_keys.balance_micro`` is the fast overdraw check and always equals the sum of the key's
``credit_entries``; the entries are append-only in the database itself, like points_entries.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
APPEND_ONLY_MESSAGE = "credit_entries is append-only: add a correcting entry instead"


def _dialect() -> str:
    return op.get_context().dialect.name


def _create_tables() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("key_sha256", sa.String(64), nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("balance_micro", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_api_keys"),
        sa.UniqueConstraint("key_sha256", name="uq_api_keys_key_sha256"),
    )
    op.create_table(
        "credit_entries",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("idempotency_key", sa.String(255), nullable=False),
        sa.Column("api_key_id", BIG_ID, nullable=False),
        sa.Column("job_id", sa.String(64), nullable=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("amount_micro", sa.BigInteger(), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_credit_entries"),
        sa.UniqueConstraint("idempotency_key", name="uq_credit_entries_idempotency_key"),
        sa.ForeignKeyConstraint(["api_key_id"], ["api_keys.id"], name="fk_credit_entries_api_key_id_api_keys"),
    )
    op.create_index("ix_credit_entries_api_key_id", "credit_entries", ["api_key_id"])
    op.create_index("ix_credit_entries_job_id", "credit_entries", ["job_id"])


def _create_append_only_trigger() -> None:
    """Refuse UPDATE and DELETE on credit_entries in the database itself, whatever code connects."""
    if _dialect() == "postgresql":
        op.execute(
            "CREATE FUNCTION credit_entries_append_only() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN RAISE EXCEPTION '{APPEND_ONLY_MESSAGE}'; END $$"
        )
        op.execute(
            "CREATE TRIGGER credit_entries_append_only BEFORE UPDATE OR DELETE ON credit_entries "
            "FOR EACH ROW EXECUTE FUNCTION credit_entries_append_only()"
        )
    elif _dialect() == "sqlite":
        for event in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER credit_entries_no_{event.lower()} BEFORE {event} ON credit_entries "
                f"BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY_MESSAGE}'); END"
            )


def _drop_append_only_trigger() -> None:
    if _dialect() == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS credit_entries_append_only ON credit_entries")
        op.execute("DROP FUNCTION IF EXISTS credit_entries_append_only()")
    elif _dialect() == "sqlite":
        for event in ("update", "delete"):
            op.execute(f"DROP TRIGGER IF EXISTS credit_entries_no_{event}")


def upgrade() -> None:
    _create_tables()
    _create_append_only_trigger()


def downgrade() -> None:
    _drop_append_only_trigger()
    op.drop_table("credit_entries")
    op.drop_table("api_keys")
