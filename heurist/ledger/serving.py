"""Uptime needs serving: a heartbeat counts only while the miner's broker user holds a consumer on the broker.

Found live (issue 13, finding 4): uptime needed no serving. A process that only sent signed heartbeats, and
consumed nothing, earned the same uptime as a miner running jobs. Two ways were proposed: heartbeats answering
a ledger-issued challenge and counted only while the miner's broker user holds a consumer; or probe jobs sent to
each miner at random times, doubling as audit decoys (AI Horde's way). This module takes the broker's word:

* RabbitMQ authenticates every connection, so the user on a consumer's channel is a fact the miner cannot
  forge with a message; a miner user may read only tier queues (``heurist.access.permissions``), so any
  consumer of its user is serving some tier.
* It costs one management-API GET of ``/api/consumers/<vhost>`` per ``ttl_s`` (10 s) for the whole network,
  whatever the number of heartbeats (and at most one per ``recheck_s``, 2 s, while some heartbeat comes from a
  user not in the list), and no GPU time. Probe jobs would cost a render per probe per miner, and
  on shared tier queues a probe cannot be aimed at one miner: any miner of the tier may take it.
* A challenge in the heartbeat adds nothing here: the heartbeat is already signed, fresh within 60 s and bound
  to the user whose inbox brought it (``heurist.ledger.uptime``); what was missing was proof of consuming.

What it does not prove: that a consumer acks its jobs (a hoarder consumes and never finishes). Its jobs are
re-sent by the sweep and its uptime is worth nothing without credited jobs, which are audited; a per-miner
cap on unacked jobs needs per-miner queues (docs/trust-boundary.md, "What remains open").

A miner therefore shows offline while it loads its models, until its worker consumes (the broker lists a new
consumer within seconds). If the management API is unreachable, the last answer is used for up to ``stale_s``
(60 s); after that nobody's heartbeat counts until it answers again: an outage costs every miner the same slots,
and never opens the gap. The embedded broker has no users: there uptime is not gated (development only).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from heurist.access.backend import BrokerAccessError

log = logging.getLogger(__name__)


class ServingUsers:
    """``serving(user)``: whether broker user ``user`` holds a consumer, by a cached broker listing."""

    def __init__(self, list_consuming: Callable[[], set[str]], ttl_s: float = 10.0, stale_s: float = 60.0,
                 recheck_s: float = 2.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.list_consuming, self.ttl_s, self.stale_s, self.clock = list_consuming, ttl_s, stale_s, clock
        self.recheck_s = recheck_s  # an unknown user is looked up again after this long, not after ttl_s
        self._users: set[str] = set()
        self._fetched_at: float | None = None
        self._lock = threading.Lock()

    def __call__(self, user: str) -> bool:
        with self._lock:
            now = self.clock()
            age = None if self._fetched_at is None else now - self._fetched_at
            if age is None or age >= self.ttl_s or (user not in self._users and age >= self.recheck_s):
                self._refresh(now)  # a miner that just began consuming is not kept waiting a whole ttl
            fresh = self._fetched_at is not None and now - self._fetched_at < self.stale_s
            return fresh and user in self._users

    def _refresh(self, now: float) -> None:
        try:
            self._users = self.list_consuming()
        except BrokerAccessError as err:
            log.warning("cannot list the broker's consumers (%s): uptime counts only until the last list is "
                        "%gs old", err, self.stale_s)
            return
        self._fetched_at = now


__all__ = ["ServingUsers"]
