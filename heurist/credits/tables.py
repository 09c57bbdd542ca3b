"""Credit tables, declared on the shared ``Base`` (``heurist.db.base``) so one metadata (and one migration
chain) holds all.

``api_keys.balance_micro`` is the fast overdraw check; ``credit_entries`` (append-only, a trigger refuses
UPDATE and DELETE, see migration 0004) is the history, and the balance always equals the sum of a key's
entries. Amounts are integer micro-units (``heurist.points.MICRO``), like points.
"""

from __future__ import annotations

from enum import StrEnum

from sqlalchemy import BigInteger, Boolean, Double, ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from heurist.db.base import ID_LEN, Base, BigId, StrEnumType

KEY_HASH_LEN = 64  # sha256 hex
PREFIX_LEN = 16


class CreditEntryKind(StrEnum):
    TOPUP = "topup"  # + units bought or granted
    CHARGE = "charge"  # - a job's price, reserved before the job is sent
    REFUND = "refund"  # + a failed job's charge, or the unused part of a text job's reservation


class ApiKey(Base):
    """A client's key: only its sha256 is stored, plus a short prefix so people can tell keys apart."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(255))
    key_sha256: Mapped[str] = mapped_column(String(KEY_HASH_LEN), unique=True)
    prefix: Mapped[str] = mapped_column(String(PREFIX_LEN))
    balance_micro: Mapped[int] = mapped_column(BigInteger())
    created_at: Mapped[float] = mapped_column(Double())
    disabled: Mapped[bool] = mapped_column(Boolean())


class CreditEntry(Base):
    """One movement of a key's credits; never edited: corrections are new entries."""

    __tablename__ = "credit_entries"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    idempotency_key: Mapped[str] = mapped_column(String(255), unique=True)
    api_key_id: Mapped[int] = mapped_column(BigId, ForeignKey("api_keys.id"), index=True)
    job_id: Mapped[str | None] = mapped_column(String(ID_LEN), index=True)  # jobs may be recorded later
    kind: Mapped[CreditEntryKind] = mapped_column(StrEnumType(CreditEntryKind))
    amount_micro: Mapped[int] = mapped_column(BigInteger())
    note: Mapped[str] = mapped_column(Text())
    created_at: Mapped[float] = mapped_column(Double())


class RateBucket(Base):
    """A key's rate-limit bucket (``heurist.gateway.ratelimit``): tokens left when last used, and when."""

    __tablename__ = "rate_buckets"

    api_key_id: Mapped[int] = mapped_column(BigId, ForeignKey("api_keys.id"), primary_key=True, autoincrement=False)
    tokens: Mapped[float] = mapped_column(Double())
    updated_at: Mapped[float] = mapped_column(Double())
