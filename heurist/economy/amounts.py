"""Token amounts: exact integers of base units (18 decimals, as the ERC-20 contracts will hold them).

Why a column type of its own. The cap alone is 10^27 base units, past BIGINT (9.2 x 10^18), and SQLite's
NUMERIC affinity turns anything past 64 bits into a REAL: 10^27 + 1 would be stored as 1e27, one base unit
lost. So an amount is ``NUMERIC(78, 0)`` on PostgreSQL (every uint256 fits in 78 digits) and a decimal
string on SQLite, and always a Python ``int`` in between. Sums over amounts are taken in Python from one
query (SQLite cannot sum text exactly); ``heurist bench epoch`` measures what that costs (0.2 s per 100,000
legs here).

People write amounts as decimal HUE ("12.5", "10000"); ``parse_hue`` refuses anything finer than one base
unit instead of rounding it.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import Numeric, String
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

from heurist.errors import HeuristError

DECIMALS = 18
ONE = 10**DECIMALS  # base units in 1 HUE (or 1 esHUE)
UINT256_MAX = 2**256 - 1
DIGITS = 78  # len(str(UINT256_MAX))


class AmountError(HeuristError):
    """An amount a person typed is not a valid token amount."""


def hue(whole: int | str) -> int:
    """Base units of ``whole`` HUE (an int, or a decimal string like "0.5")."""
    return parse_hue(str(whole), "amount")


def parse_hue(text: str, field: str = "amount") -> int:
    """Base units of a decimal HUE amount; refuses negatives, junk and more than 18 decimals, naming ``field``."""
    try:
        value = Decimal(text.strip().replace("_", ""))
    except InvalidOperation:
        raise AmountError(f"{field}: {text!r} is not a number; give HUE as a decimal like 12.5") from None
    if not value.is_finite() or value < 0:
        raise AmountError(f"{field}: {text!r} must be a positive number of HUE")
    units = value * ONE
    if units != units.to_integral_value():
        raise AmountError(f"{field}: {text!r} has more than {DECIMALS} decimals (1 base unit = 1e-18 HUE)")
    if units > UINT256_MAX:
        raise AmountError(f"{field}: {text!r} does not fit a uint256")
    return int(units)


def format_hue(units: int) -> str:
    """``units`` as decimal HUE with no trailing zeros: 1500000000000000000 -> "1.5"."""
    sign = "-" if units < 0 else ""
    whole, frac = divmod(abs(units), ONE)
    tail = f"{frac:0{DECIMALS}d}".rstrip("0")
    return f"{sign}{whole}.{tail}" if tail else f"{sign}{whole}"


class Amount(TypeDecorator[int]):
    """A signed integer amount of base units, exact on both databases (see the module docstring)."""

    impl = Numeric(DIGITS, 0)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String(DIGITS + 1))
        return dialect.type_descriptor(Numeric(DIGITS, 0))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"token amounts are ints of base units, got {type(value).__name__}")
        return str(value) if dialect.name == "sqlite" else Decimal(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> int | None:
        return None if value is None else int(value)
