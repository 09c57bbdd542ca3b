"""Workers outlive the broker: they reconnect by themselves, for as long as it takes, and carry on consuming.

Measured on the old code (issue 14): the ledger and the miner gave up after ~111 s without a broker
(``broker_connection_max_retries = 10``) and never came back; and after their connections were reset while
RabbitMQ still held the old ones, they exited at once: the queue of a worker's remote control
(``<node>.celery.pidbox``) and of its mingle replies are exclusive to a connection, so redeclaring them on the
new connection failed with ``RESOURCE_LOCKED`` (kombu raises ``InconsistencyError`` for the mailbox), which
Celery treats as unrecoverable.

Now, for every worker (``celeryconfig`` and ``create_app``):

- **No limit on reconnecting** (``broker_connection_max_retries = None``), at kombu's bounded back-off: 2 s,
  4 s, 6 s ... then every 30 s. A worker that lost its broker for 150 s is consuming again 2-30 s after it
  is back (measured: a job submitted when the broker came back was completed 7.7 s later).
- **Heartbeats every 10 s** (``Settings.broker_heartbeat_s``; Celery's default was 120 s). A partition leaves
  a half-open connection that no read or write ever fails on; 2-3 missed heartbeats (20-30 s) end it, on the
  worker's side (which reconnects) and on RabbitMQ's (which requeues the worker's unacknowledged job and
  frees its exclusive queues). Publishers do not need them: their publishes are bounded by the confirm
  timeout (``heurist.confirms``).
- **A queue still locked by the previous connection is retried**, not fatal: ``Consumer`` counts those
  errors as connection errors, so Celery closes the new connection and starts over, and waits 1 s, 2 s,
  4 s, then 8 s between such tries, until RabbitMQ has noticed that the old connection is dead (measured:
  the ledger consumed again 30-38 s after its connections were reset behind RabbitMQ's back, 10 s heartbeat).
- **A unique node name per start** (``node_name``: ``ledger-3f9a1c@host``), so a restarted process never
  meets the queues of its previous life, and two ledgers on one host do not share a mailbox. Miners run
  without remote control, mingle or gossip (``heurist.access.miner_app``): nothing on the broker is keyed
  by their node name, which keeps naming their key.
"""

from __future__ import annotations

import secrets
import socket
import time
from collections import deque
from typing import Any

from amqp.exceptions import ResourceLocked
from celery.utils.log import get_logger
from celery.worker import state
from celery.worker.consumer import Consumer as CeleryConsumer
from kombu.exceptions import InconsistencyError

log = get_logger(__name__)  # a celery.* logger: in the worker's log, formatted as Celery's own

LOCKED: tuple[type[BaseException], ...] = (InconsistencyError, ResourceLocked)
LOCK_BACKOFF_MAX_S = 8.0
LOCK_WINDOW_S = 120.0  # lock errors further apart than this start the back-off again


def node_name(role: str) -> str:
    """``<role>-<6 hex digits>@<host>``: a worker's node name, unique to this start."""
    return f"{role}-{secrets.token_hex(3)}@{socket.gethostname()}"


def lock_backoff(locked_at: deque[float], now: float) -> float:
    """Seconds to wait before reconnecting after the lock errors at ``locked_at`` (monotonic times): 0 without
    a recent one, then 1, 2, 4, then ``LOCK_BACKOFF_MAX_S`` (8)."""
    recent = sum(1 for at in locked_at if now - at < LOCK_WINDOW_S)
    return 0.0 if recent == 0 else min(2.0 ** (recent - 1), LOCK_BACKOFF_MAX_S)


class Consumer(CeleryConsumer):  # type: ignore[misc]
    """Celery's consumer, retrying a queue that the broker still holds for this worker's previous connection
    (``celeryconfig.worker_consumer``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connection_errors: tuple[type[BaseException], ...] = (*self.connection_errors, *LOCKED)
        self.locked_at: deque[float] = deque(maxlen=16)

    def on_connection_error_after_connected(self, exc: BaseException) -> None:
        if isinstance(exc, LOCKED):
            self.locked_at.append(time.monotonic())
            log.warning("a queue of worker %s is still held by its previous broker connection (%s); reconnecting "
                        "in %gs, until the broker drops that connection", self.hostname, exc,
                        lock_backoff(self.locked_at, time.monotonic()))
        super().on_connection_error_after_connected(exc)

    def connect(self) -> Any:
        """Connect, first waiting out the lock back-off (a stop request still ends the wait at once)."""
        wake = time.monotonic() + lock_backoff(self.locked_at, time.monotonic())
        while time.monotonic() < wake:
            state.maybe_shutdown()
            time.sleep(min(0.1, max(0.0, wake - time.monotonic())))
        return super().connect()
