"""The token economy (``heurist.economy``): a double-entry book of HUE and esHUE, bribes, closed epochs and
their Merkle leaves. All of it is append-only, enforced by triggers like 0001's (only account balances, a cache
of the legs, change).

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | Sequence[str] | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
AMOUNT = sa.Numeric(78, 0).with_variant(sa.String(79), "sqlite")  # heurist.economy.amounts.Amount
APPEND_ONLY = ("economy_txs", "economy_legs", "economy_bribes", "economy_epochs", "economy_payouts")
MESSAGE = "the economy book is append-only: post a correcting transaction instead"


def _dialect() -> str:
    return op.get_bind().dialect.name


def _create_book() -> None:
    op.create_table(
        "economy_accounts",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("token", sa.String(32), nullable=False),
        sa.Column("owner", sa.String(42), nullable=False),
        sa.Column("node", sa.String(42), nullable=False),
        sa.Column("ref", sa.String(128), nullable=False),
        sa.Column("balance", AMOUNT, nullable=False),
        sa.Column("unlock_at_ms", sa.BigInteger(), nullable=True),
        sa.Column("vest_total", AMOUNT, nullable=True),
        sa.Column("vest_start_ms", sa.BigInteger(), nullable=True),
        sa.Column("vest_end_ms", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_economy_accounts"),
        sa.UniqueConstraint("kind", "token", "owner", "node", "ref", name="uq_economy_accounts_key"),
    )
    op.create_index("ix_economy_accounts_owner", "economy_accounts", ["owner"])
    op.create_index("ix_economy_accounts_node", "economy_accounts", ["node"])
    op.create_table(
        "economy_txs",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("actor", sa.String(42), nullable=False),
        sa.Column("at_ms", sa.BigInteger(), nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.Column("signature", sa.Text(), nullable=True),
        sa.Column("recorded_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_economy_txs"),
        sa.UniqueConstraint("key", name="uq_economy_txs_key"),
    )
    op.create_index("ix_economy_txs_kind", "economy_txs", ["kind"])
    op.create_index("ix_economy_txs_epoch", "economy_txs", ["epoch"])
    op.create_table(
        "economy_legs",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("tx_id", BIG_ID, nullable=False),
        sa.Column("account_id", BIG_ID, nullable=False),
        sa.Column("amount", AMOUNT, nullable=False),
        sa.Column("at_ms", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["tx_id"], ["economy_txs.id"], name="fk_economy_legs_tx_id_economy_txs"),
        sa.ForeignKeyConstraint(["account_id"], ["economy_accounts.id"],
                                name="fk_economy_legs_account_id_economy_accounts"),
        sa.PrimaryKeyConstraint("id", name="pk_economy_legs"),
    )
    op.create_index("ix_economy_legs_tx_id", "economy_legs", ["tx_id"])
    op.create_index("ix_economy_legs_at_ms", "economy_legs", ["at_ms"])
    op.create_index("ix_economy_legs_account_at", "economy_legs", ["account_id", "at_ms"])


def _create_epochs() -> None:
    op.create_table(
        "economy_bribes",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("node", sa.String(42), nullable=False),
        sa.Column("bps", sa.Integer(), nullable=False),
        sa.Column("effective_epoch", sa.BigInteger(), nullable=False),
        sa.Column("tx_id", BIG_ID, nullable=False),
        sa.ForeignKeyConstraint(["tx_id"], ["economy_txs.id"], name="fk_economy_bribes_tx_id_economy_txs"),
        sa.PrimaryKeyConstraint("id", name="pk_economy_bribes"),
    )
    op.create_index("ix_economy_bribes_node", "economy_bribes", ["node"])
    op.create_table(
        "economy_epochs",
        sa.Column("epoch", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("start_ms", sa.BigInteger(), nullable=False),
        sa.Column("end_ms", sa.BigInteger(), nullable=False),
        sa.Column("closed_at", sa.Double(), nullable=False),
        sa.Column("base_fee_per_micro", AMOUNT, nullable=False),
        sa.Column("next_base_fee_per_micro", AMOUNT, nullable=False),
        sa.Column("micro_units", AMOUNT, nullable=False),
        sa.Column("issued", AMOUNT, nullable=False),
        sa.Column("burned", AMOUNT, nullable=False),
        sa.Column("merkle_root", sa.String(66), nullable=True),
        sa.Column("report", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("epoch", name="pk_economy_epochs"),
    )
    op.create_table(
        "economy_payouts",
        sa.Column("epoch", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("address", sa.String(42), nullable=False),
        sa.Column("amount", AMOUNT, nullable=False),
        sa.PrimaryKeyConstraint("epoch", "address", name="pk_economy_payouts"),
    )


def _append_only(table: str) -> None:
    """Refuse UPDATE and DELETE on ``table`` in the database itself, whatever code connects."""
    if _dialect() == "postgresql":
        op.execute(f"CREATE FUNCTION {table}_append_only() RETURNS trigger LANGUAGE plpgsql AS "
                   f"$$ BEGIN RAISE EXCEPTION '{MESSAGE}'; END $$")
        op.execute(f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
                   f"FOR EACH ROW EXECUTE FUNCTION {table}_append_only()")
    else:
        for event in ("UPDATE", "DELETE"):
            op.execute(f"CREATE TRIGGER {table}_no_{event.lower()} BEFORE {event} ON {table} "
                       f"BEGIN SELECT RAISE(ABORT, '{MESSAGE}'); END")


def _drop_append_only(table: str) -> None:
    if _dialect() == "postgresql":
        op.execute(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}")
        op.execute(f"DROP FUNCTION IF EXISTS {table}_append_only()")
    else:
        for event in ("update", "delete"):
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_{event}")


def upgrade() -> None:
    _create_book()
    _create_epochs()
    for table in APPEND_ONLY:
        _append_only(table)


def downgrade() -> None:
    for table in APPEND_ONLY:
        _drop_append_only(table)
    for table in ("economy_payouts", "economy_epochs", "economy_bribes", "economy_legs", "economy_txs",
                  "economy_accounts"):
        op.drop_table(table)
