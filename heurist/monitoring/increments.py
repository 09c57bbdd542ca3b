"""Running sums over an append-only ledger table, reading each row once: a scrape costs the new rows only.

Points entries, audits and rejections are never updated or deleted (points entries and audits have
triggers that refuse it), and their autoincrement ``id`` is the primary key, so "rows after id W" is an
index range. The first update folds history into the sums with one GROUP BY; later ones read rows with
``id > W``. PostgreSQL hands out ids before commit, so a row may become visible after a higher id; the
ids of rows created within ``lookback_s`` of the newest are remembered and W stays below them, so such a
row is still counted, once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import InstrumentedAttribute, Session
from sqlalchemy.sql.elements import SQLCoreOperations

LOOKBACK_S = 30.0

Key = tuple[Any, ...]


class AppendOnlySums:
    """``totals[key]`` = sum of ``amount`` (or the row count) over every row, grouped by ``keys``."""

    def __init__(self, row_id: InstrumentedAttribute[int], created: InstrumentedAttribute[float],
                 keys: Sequence[SQLCoreOperations[Any]], amount: SQLCoreOperations[Any] | None = None,
                 source: Callable[[Select[Any]], Select[Any]] = lambda stmt: stmt,
                 lookback_s: float = LOOKBACK_S) -> None:
        self.row_id, self.created, self.keys = row_id, created, list(keys)
        self.amount = amount
        self.source = source  # adds the FROM/JOIN the keys need
        self.lookback_s = lookback_s
        self.totals: dict[Key, int] = {}
        self.watermark: int | None = None  # every row with id <= watermark is counted
        self._seen: dict[int, float] = {}  # id -> created, rows above the watermark already counted
        self._newest = float("-inf")

    def update(self, session: Session) -> dict[Key, int]:
        """Add the rows committed since the last update; returns the running totals."""
        if self.watermark is None:
            self._bootstrap(session)
        watermark = self.watermark or 0
        columns = [self.row_id, self.created, *self.keys, *([self.amount] if self.amount is not None else [])]
        highest = watermark
        for row in session.execute(self.source(select(*columns)).where(self.row_id > watermark)):
            values: list[Any] = list(row)
            row_id, created = int(values[0]), float(values[1])
            highest, self._newest = max(highest, row_id), max(self._newest, created)
            if row_id not in self._seen:
                self._seen[row_id] = created
                key = tuple(values[2:2 + len(self.keys)])
                self.totals[key] = self.totals.get(key, 0) + (int(values[-1] or 0) if self.amount is not None else 1)
        cutoff = self._newest - self.lookback_s
        self._seen = {i: c for i, c in self._seen.items() if c > cutoff}
        self.watermark = max(watermark, min(self._seen) - 1 if self._seen else highest)
        return self.totals

    def _bootstrap(self, session: Session) -> None:
        """Sum every row created before (newest - lookback) with one GROUP BY; the rest are read as rows."""
        newest = session.scalar(select(func.max(self.created)))
        if newest is None:
            self.watermark = 0
            return
        self._newest = float(newest)
        boundary = session.scalar(select(func.max(self.row_id)).where(self.created <= newest - self.lookback_s))
        self.watermark = int(boundary or 0)
        if not self.watermark:
            return
        value = func.sum(self.amount) if self.amount is not None else func.count()
        stmt = self.source(select(*self.keys, value)).where(self.row_id <= self.watermark).group_by(*self.keys)
        for row in session.execute(stmt):
            values: list[Any] = list(row)
            self.totals[tuple(values[:-1])] = int(values[-1] or 0)
