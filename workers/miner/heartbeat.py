"""The miner's heartbeat: a signed "I am up" to the ledger every ``heartbeat_interval_s``, as a worker bootstep.

A thread, not the worker's timer: on the solo pool the timer waits while a job runs, and a 30 s LLM job
would read as downtime. The thread lives exactly as long as the worker (the bootstep starts and stops it),
so heartbeats stop when the worker stops consuming: a miner that is not serving shows offline.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from celery import Celery, bootsteps

from heurist.celery_app import services
from heurist.identity import Wallet
from heurist.jobs import Heartbeat, SignedHeartbeat
from heurist.signing import DEFAULT_DOMAIN, Domain, sign_message
from tasks.names import RECORD_HEARTBEAT

log = logging.getLogger(__name__)


@dataclass
class HeartbeatSender:
    """Signs and sends heartbeats for one miner key, on its own thread."""

    app: Celery
    wallet: Wallet
    interval_s: float
    ledger_queue: str
    domain: Domain = DEFAULT_DOMAIN
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def beat(self) -> None:
        """Send one heartbeat; a broker hiccup is logged and the next beat tries again."""
        heartbeat = Heartbeat(miner=self.wallet.address, sent_at=time.time())
        signed = SignedHeartbeat(heartbeat=heartbeat, signature=sign_message(self.wallet, heartbeat, self.domain))
        try:
            self.app.send_task(RECORD_HEARTBEAT, args=[signed.model_dump(mode="json")], queue=self.ledger_queue,
                               retry=False, expires=max(60.0, 2 * self.interval_s))
        except Exception as err:  # the broker is away: the slot is lost, the miner is not
            log.warning("heartbeat not sent (%s); retrying in %gs", err, self.interval_s)

    def _run(self) -> None:
        while True:
            self.beat()
            if self._stop.wait(self.interval_s):
                return

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="heurist-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


class HeartbeatStep(bootsteps.StartStopStep):
    """Runs the app's ``heartbeats`` service (set by ``install_heartbeats``) while the worker runs."""

    label = "heartbeat"

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.sender = services(parent.app).heartbeats

    def start(self, parent: Any) -> None:
        self.sender.start()

    def stop(self, parent: Any) -> None:
        self.sender.stop()


def install_heartbeats(app: Celery, wallet: Wallet, interval_s: float, ledger_queue: str,
                       domain: Domain = DEFAULT_DOMAIN) -> HeartbeatSender:
    """Make every worker of ``app`` send this miner's heartbeats while it runs."""
    sender = HeartbeatSender(app=app, wallet=wallet, interval_s=interval_s, ledger_queue=ledger_queue, domain=domain)
    services(app).heartbeats = sender
    app.steps["worker"].add(HeartbeatStep)
    return sender
