"""Miners in Flower, from the ledger's verified heartbeats instead of the miners' own events.

Miners run without Celery events (``heurist.access.miner_app``): a configure or write right on ``celeryev``
let one miner delete the exchange (stopping every worker within 20 s) or spoof any worker's events. So the
ledger, which checks each heartbeat's signature and broker user, publishes a ``worker-heartbeat`` event for the
miner instead (``worker-online`` for its first), under hostname ``miner-<address>@ledger``, with ``freq`` the
heartbeat interval: Flower's worker status shows the miner alive exactly while its signed heartbeats arrive.
``heurist_miner`` carries the address, the models and the device the miner registered with.

One event dispatcher serves every miner: its hostname is set per event under a lock (a dispatcher per miner
would hold a channel per miner). A broker hiccup loses an event, never a heartbeat's uptime slot.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import Celery
from sqlalchemy import select

from heurist.db.engine import session_factory
from heurist.jobs import SignedHeartbeat
from heurist.ledger.tables import Miner
from heurist.ledger.uptime import HeartbeatVerdict, UptimeBook

log = logging.getLogger(__name__)


def miner_hostname(address: str) -> str:
    return f"miner-{address.lower()}@ledger"


class MinerEvents:
    """Publishes Celery worker events for miners whose heartbeats the ledger accepted."""

    def __init__(self, app: Celery, interval_s: float) -> None:
        self.app, self.interval_s = app, interval_s
        self._lock = threading.Lock()
        self._dispatcher: Any = None
        self._online: set[str] = set()

    def beat(self, address: str, card: dict[str, Any]) -> None:
        kind = "worker-heartbeat" if address in self._online else "worker-online"
        try:
            with self._lock:
                if self._dispatcher is None:
                    self._dispatcher = self.app.events.Dispatcher(self.app.connection_for_write(), enabled=True,
                                                                  buffer_while_offline=False)
                self._dispatcher.hostname = miner_hostname(address)
                self._dispatcher.send(kind, freq=self.interval_s, active=0, processed=0, sw_ident="heurist-miner",
                                      heurist_miner=card)
            self._online.add(address)
        except Exception as err:  # monitoring must never cost a heartbeat
            log.warning("could not publish the monitoring event of miner %s: %s", address, err)
            with self._lock:
                broken, self._dispatcher = self._dispatcher, None
            if broken is not None:
                broken.connection.release()  # the next event opens a fresh connection


class MonitoredUptime:
    """The uptime book, announcing each accepted heartbeat to monitoring (``MinerEvents``)."""

    def __init__(self, book: UptimeBook, events: MinerEvents) -> None:
        self.book, self.events = book, events
        self._sessions = session_factory(book.engine)

    def record(self, signed: SignedHeartbeat, sender: str | None = None) -> HeartbeatVerdict:
        verdict = self.book.record(signed, sender)
        if verdict.accepted:
            with self._sessions() as session:
                row = session.execute(select(Miner.models, Miner.device, Miner.broker_user)
                                      .where(Miner.address == verdict.address)).one_or_none()
            card = {"address": verdict.address} if row is None else {
                "address": verdict.address, "models": row.models, "device": row.device, "broker_user": row.broker_user}
            self.events.beat(verdict.address, card)
        return verdict
