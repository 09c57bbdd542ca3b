"""The declarative base every package's tables share, and the column types and sizes they are built from.

One ``Base`` means one ``metadata``: one schema and one Alembic migration chain for the ledger, credit and
search tables (and whatever package adds tables next). Each package owns its ``tables.py`` and imports only
from here, so no tables module imports another; ``heurist.db.schema`` gathers them all for Alembic.
Enumerations are stored as their string values (no native enum types): later issues add values without a
type migration.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from sqlalchemy import BigInteger, Integer, MetaData, String
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeDecorator

# Deterministic constraint names: Alembic batch migrations on SQLite need names to drop or alter them.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

ADDRESS_LEN = 42  # 0x + 40 hex digits
ID_LEN = 64
KEY_LEN = 1024  # S3 keys are at most 1024 bytes
ENUM_LEN = 32

# SQLite only auto-increments a column declared exactly INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class StrEnumType(TypeDecorator[Any]):
    """A ``StrEnum`` stored as its value in a VARCHAR: plain strings in the database, enums in Python."""

    impl = String(ENUM_LEN)
    cache_ok = True

    def __init__(self, enum: type[StrEnum]) -> None:
        super().__init__()
        self.enum = enum

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        return None if value is None else self.enum(value).value

    def process_result_value(self, value: Any, dialect: Dialect) -> StrEnum | None:
        return None if value is None else self.enum(value)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


metadata = Base.metadata

__all__ = [
    "ADDRESS_LEN",
    "ENUM_LEN",
    "ID_LEN",
    "KEY_LEN",
    "NAMING_CONVENTION",
    "Base",
    "BigId",
    "StrEnumType",
    "metadata",
]
