"""The economy's tables: a double-entry book of HUE and esHUE, and what each epoch close decided.

* ``economy_txs`` and ``economy_legs`` are the book. Every change is one transaction with a unique
  idempotency key (a signed action's is ``action:<address>:<nonce>``, so a replay cannot post twice) and legs
  that sum to zero: the ``mint`` account goes negative by what was minted, ``burn`` positive by what was
  burned, so minted - burned always equals the sum of every other account. Triggers refuse UPDATE and DELETE
  on both (migration 0015): corrections are new transactions.
* ``economy_accounts.balance`` is a cache of the sum of an account's legs, written in the same transaction; it
  is what an overdraw check locks and reads. The property tests check that it equals the legs' sum.
* A leg carries its transaction's effective time (``at_ms``): an epoch close reads stake-time from legs alone.

Amounts are ``heurist.economy.amounts.Amount`` (exact on both databases); times are unix milliseconds.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, BigInteger, Double, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from heurist.db.base import ADDRESS_LEN, Base, BigId, StrEnumType
from heurist.economy.amounts import Amount

SYSTEM = ""  # the owner of system accounts (mint, burn, the fee pool)


class Token(StrEnum):
    HUE = "HUE"
    ESHUE = "esHUE"


class AccountKind(StrEnum):
    """What an account holds; the conservation check groups them as the issue names them."""

    LIQUID = "liquid"  # an address's free HUE or esHUE
    STAKE = "stake"  # staked by ``owner`` on miner node ``node``
    LOCK = "lock"  # unstaked HUE waiting out its lock (``unlock_at_ms``); one account per unstake
    VEST = "vest"  # esHUE vesting into HUE (``vest_*``); one account per vest action
    FEES = "fees"  # unclaimed: miners' fee share waiting for its epoch's close (system)
    MINT = "mint"  # minus everything minted (system)
    BURN = "burn"  # everything burned (system)


class Account(Base):
    __tablename__ = "economy_accounts"
    __table_args__ = (UniqueConstraint("kind", "token", "owner", "node", "ref", name="uq_economy_accounts_key"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    kind: Mapped[AccountKind] = mapped_column(StrEnumType(AccountKind))
    token: Mapped[Token] = mapped_column(StrEnumType(Token))
    owner: Mapped[str] = mapped_column(String(ADDRESS_LEN), index=True)
    node: Mapped[str] = mapped_column(String(ADDRESS_LEN), index=True)
    ref: Mapped[str] = mapped_column(String(128))
    balance: Mapped[int] = mapped_column(Amount())
    unlock_at_ms: Mapped[int | None] = mapped_column(BigInteger())  # LOCK: withdrawable from then on
    vest_total: Mapped[int | None] = mapped_column(Amount())  # VEST: esHUE put in
    vest_start_ms: Mapped[int | None] = mapped_column(BigInteger())
    vest_end_ms: Mapped[int | None] = mapped_column(BigInteger())


class Tx(Base):
    __tablename__ = "economy_txs"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(255), unique=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    actor: Mapped[str] = mapped_column(String(ADDRESS_LEN))  # the signer, or "" for the system
    at_ms: Mapped[int] = mapped_column(BigInteger())  # effective time
    epoch: Mapped[int] = mapped_column(BigInteger(), index=True)
    body: Mapped[dict[str, Any]] = mapped_column(JSON())  # the signed message, or the system's reason
    signature: Mapped[str | None] = mapped_column(Text())
    recorded_at: Mapped[float] = mapped_column(Double())


class Leg(Base):
    __tablename__ = "economy_legs"
    __table_args__ = (Index("ix_economy_legs_account_at", "account_id", "at_ms"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    tx_id: Mapped[int] = mapped_column(BigId, ForeignKey("economy_txs.id"), index=True)
    account_id: Mapped[int] = mapped_column(BigId, ForeignKey("economy_accounts.id"))
    amount: Mapped[int] = mapped_column(Amount())
    at_ms: Mapped[int] = mapped_column(BigInteger(), index=True)


class Bribe(Base):
    """A node's bribe (share of its rewards paid to its stakers), from ``effective_epoch`` on. Append-only."""

    __tablename__ = "economy_bribes"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    node: Mapped[str] = mapped_column(String(ADDRESS_LEN), index=True)
    bps: Mapped[int] = mapped_column(Integer())
    effective_epoch: Mapped[int] = mapped_column(BigInteger())
    tx_id: Mapped[int] = mapped_column(BigId, ForeignKey("economy_txs.id"))


class Epoch(Base):
    """A closed epoch: its totals, fees, Merkle root and report. The primary key makes a close happen once."""

    __tablename__ = "economy_epochs"

    epoch: Mapped[int] = mapped_column(BigInteger(), primary_key=True, autoincrement=False)
    start_ms: Mapped[int] = mapped_column(BigInteger())
    end_ms: Mapped[int] = mapped_column(BigInteger())
    closed_at: Mapped[float] = mapped_column(Double())
    base_fee_per_micro: Mapped[int] = mapped_column(Amount())  # in effect during the epoch
    next_base_fee_per_micro: Mapped[int] = mapped_column(Amount())
    micro_units: Mapped[int] = mapped_column(Amount())  # credit micro-units bought in the epoch
    issued: Mapped[int] = mapped_column(Amount())
    burned: Mapped[int] = mapped_column(Amount())
    merkle_root: Mapped[str | None] = mapped_column(String(66))
    report: Mapped[dict[str, Any]] = mapped_column(JSON())


class Payout(Base):
    """One Merkle leaf: what ``address`` was paid in ``epoch`` (epoch -1: the testnet conversion at TGE)."""

    __tablename__ = "economy_payouts"

    epoch: Mapped[int] = mapped_column(BigInteger(), primary_key=True, autoincrement=False)
    address: Mapped[str] = mapped_column(String(ADDRESS_LEN), primary_key=True)
    amount: Mapped[int] = mapped_column(Amount())
