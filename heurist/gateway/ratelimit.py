"""Per-key token buckets: a burst up to the per-minute rate, then one request per 60/rate seconds."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from fastapi import Depends, Request

from heurist.credits.tables import ApiKey
from heurist.gateway.auth import api_key
from heurist.gateway.errors import ApiError


class RateLimiter:
    """Token buckets keyed by API key id, in memory (one gateway process)."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = float(per_minute)
        self.refill_per_s = per_minute / 60.0
        self.clock = clock
        self._buckets: dict[int, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key_id: int) -> float:
        """Spend one token: 0 if allowed, else the seconds until one is available."""
        with self._lock:
            now = self.clock()
            tokens, last = self._buckets.get(key_id, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - last) * self.refill_per_s)
            if tokens >= 1:
                self._buckets[key_id] = (tokens - 1, now)
                return 0.0
            self._buckets[key_id] = (tokens, now)
            return (1 - tokens) / self.refill_per_s


async def limited_key(request: Request, key: ApiKey = Depends(api_key)) -> ApiKey:
    """The authenticated key, or 429 with Retry-After once its bucket is empty."""
    limiter: RateLimiter = request.app.state.limiter
    wait = limiter.take(key.id)
    if wait > 0:
        raise ApiError(429, f"rate limit of {limiter.capacity:g} requests per minute reached; retry in {wait:.1f}s",
                       type_="rate_limit_error", code="rate_limited", headers={"Retry-After": str(math.ceil(wait))})
    return key
