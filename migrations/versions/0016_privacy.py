"""Private jobs (``heurist.privacy``): a job's sealed envelope, registrations, approvals and the key-release log,
the last three append-only (triggers as in 0015).

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | Sequence[str] | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
APPEND_ONLY = ("privacy_registrations", "privacy_approvals", "keyrelease_log")
MESSAGE = "privacy records are append-only: add a new row instead"


def _dialect() -> str:
    return op.get_bind().dialect.name


def _create() -> None:
    op.create_table(
        "privacy_registrations",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("address", sa.String(42), nullable=False),
        sa.Column("x25519_public_key", sa.String(64), nullable=False),
        sa.Column("policy_version", sa.String(64), nullable=False),
        sa.Column("signature", sa.String(132), nullable=False),
        sa.Column("tee_attestation", sa.Text(), nullable=True),
        sa.Column("tee_status", sa.String(32), nullable=False),
        sa.Column("registered_at", sa.Double(), nullable=False),
        sa.Column("received_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_privacy_registrations"),
    )
    op.create_index("ix_privacy_registrations_address", "privacy_registrations", ["address"])
    op.create_table(
        "privacy_approvals",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("address", sa.String(42), nullable=False),
        sa.Column("approved", sa.Boolean(), nullable=False),
        sa.Column("operator", sa.String(128), nullable=False),
        sa.Column("note", sa.String(500), nullable=False),
        sa.Column("at", sa.Double(), nullable=False),
        sa.Column("approver", sa.String(42), nullable=True),
        sa.Column("signature", sa.String(132), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_privacy_approvals"),
    )
    op.create_index("ix_privacy_approvals_address", "privacy_approvals", ["address"])
    op.create_table(
        "keyrelease_log",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("node", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.String(64), nullable=False),
        sa.Column("requester", sa.String(42), nullable=True),
        sa.Column("nonce", sa.String(64), nullable=True),
        sa.Column("released", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.String(500), nullable=False),
        sa.Column("at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_keyrelease_log"),
        sa.UniqueConstraint("node", "nonce", name="uq_keyrelease_log_node_nonce"),
    )
    op.create_index("ix_keyrelease_log_job_id", "keyrelease_log", ["job_id"])
    op.create_index("ix_keyrelease_log_requester", "keyrelease_log", ["requester"])


def _append_only(table: str) -> None:
    if _dialect() == "postgresql":
        op.execute(f"CREATE FUNCTION {table}_append_only() RETURNS trigger LANGUAGE plpgsql AS "
                   f"$$ BEGIN RAISE EXCEPTION '{MESSAGE}'; END $$")
        op.execute(f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
                   f"FOR EACH ROW EXECUTE FUNCTION {table}_append_only()")
    else:
        for event in ("UPDATE", "DELETE"):
            op.execute(f"CREATE TRIGGER {table}_no_{event.lower()} BEFORE {event} ON {table} "
                       f"BEGIN SELECT RAISE(ABORT, '{MESSAGE}'); END")


def upgrade() -> None:
    op.add_column("jobs", sa.Column("sealed", sa.JSON(), nullable=True))  # no batch copy: keeps jobs' triggers
    _create()
    for table in APPEND_ONLY:
        _append_only(table)


def downgrade() -> None:
    for table in APPEND_ONLY:
        if _dialect() == "postgresql":
            op.execute(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}")
            op.execute(f"DROP FUNCTION IF EXISTS {table}_append_only()")
    for table in ("keyrelease_log", "privacy_approvals", "privacy_registrations"):
        op.drop_table(table)
    op.drop_column("jobs", "sealed")
