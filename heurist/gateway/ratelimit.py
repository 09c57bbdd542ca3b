"""Per-key token buckets in the database: a burst up to the per-minute rate, then one request per 60/rate
seconds, shared by every gateway process on the same ledger database (in memory, each of N replicas
would allow N times the rate).

One conditional UPDATE takes a token: it refills the bucket for the time since its last use and spends one
only if that leaves at least one, so two processes racing for the last token cannot both get it (the row
lock on PostgreSQL, the write lock on SQLite). Times are wall-clock seconds, shared between processes.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import Engine, case, select, update
from sqlalchemy.exc import IntegrityError

from heurist.credits.tables import RateBucket
from heurist.db.engine import session_scope


class RateLimiter:
    """Token buckets keyed by API key id, one row each in ``rate_buckets``."""

    def __init__(self, engine: Engine, per_minute: int, clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self.capacity = float(per_minute)
        self.refill_per_s = per_minute / 60.0
        self.clock = clock

    def take(self, key_id: int) -> float:
        """Spend one token: 0 if allowed, else the seconds until one is available."""
        now = self.clock()
        refilled = RateBucket.tokens + (now - RateBucket.updated_at) * self.refill_per_s
        level = case((refilled > self.capacity, self.capacity), else_=refilled)
        with session_scope(self.engine) as session:
            taken = session.execute(update(RateBucket).where(RateBucket.api_key_id == key_id, level >= 1)
                                    .values(tokens=level - 1, updated_at=now))
            if taken.rowcount:  # type: ignore[attr-defined]
                return 0.0
            tokens = session.scalar(select(level).where(RateBucket.api_key_id == key_id))
        if tokens is None:
            return self._first(key_id, now)
        return (1 - float(tokens)) / self.refill_per_s

    def _first(self, key_id: int, now: float) -> float:
        """A key's first request: a full bucket, less this one (or, if another process made it, take again)."""
        try:
            with session_scope(self.engine) as session:
                session.add(RateBucket(api_key_id=key_id, tokens=self.capacity - 1, updated_at=now))
        except IntegrityError:
            return self.take(key_id)
        return 0.0

