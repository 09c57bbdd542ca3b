"""Publisher confirms: a publish that matters returns only once the broker has the message.

AMQP ``basic.publish`` is fire-and-forget. During a 10 s partition to the broker (TCP up, nothing answering),
30 submits returned in about 10 ms each and 10 of them never reached RabbitMQ: the bytes sat in a socket
buffer that the reset after the partition threw away (issue 14). With confirms, the same run lost none.

Every ``send_task`` of a ``HeuristCelery`` app (client and gateway submits, the ledger's redispatch, sweep
and outbox, Celery's own task retries, the miner's hello, completions, failures and heartbeats) now:

- publishes on a connection in confirm mode (``confirm_publish``, py-amqp) and waits at most
  ``broker_confirm_timeout_s`` (5 s) for the broker's ``basic.ack``; no socket read or write of that
  connection waits longer either. A timeout, a ``basic.nack`` (a full inbox refusing the publish) or a
  dropped connection is a recoverable connection error to kombu;
- is tried again on a new connection, at once (an idle connection reset: the publish took 8-53 ms), then 1 s,
  2 s, 4 s and 5 s apart (``send_confirmed``; each new connection waits at most ``broker_connection_timeout``,
  4 s, for the broker's handshake). A duplicate is harmless: jobs and completions are keyed, a second one is
  refused or counted a DUPLICATE;
- raises ``BrokerUnavailableError`` once ``broker_publish_timeout_s`` (30 s) has passed: measured here, 30 s
  after the publish behind a partition that did not end, 27 s with the broker down (refused connections).
  The client then records the job failed ("could not enqueue") and the caller sees the error; the gateway
  answers 503. A partition that ends in time costs the publish its wait, nothing else (healed 8 s in: the
  publish returned 0.1 s later).

A miner's completion or failure report is sent again until the job's deadline (``deliver``): its work is done,
and the job message it would otherwise get back is refused as a replay.

Only these publishes are confirmed. Streamed tokens (best-effort previews, one publish per token) keep
their unconfirmed channel: a confirm per token would cap a remote miner's stream at one token per round trip.
The embedded SQLite broker has no confirms: its publish is an INSERT that has committed when it returns.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from amqp.exceptions import AMQPError
from celery import Celery
from kombu import Connection
from kombu.exceptions import KombuError
from kombu.pools import ProducerPool

from heurist.errors import FailureKind, HeuristError
from heurist.settings import Settings

log = logging.getLogger(__name__)

PUBLISH_ERRORS: tuple[type[BaseException], ...] = (KombuError, AMQPError, OSError)


class BrokerUnavailableError(HeuristError):
    """The broker did not confirm a publish after every retry: the message may not be on the broker."""

    public = "the job queue is unavailable; try again in a minute"
    kind = FailureKind.BROKER  # a miner's failure report of it starts "broker: "


def confirm_options(settings: Settings) -> dict[str, Any]:
    """Transport options of the confirmed connections: confirm mode, and no socket read or write that waits
    longer than a confirm would (closing a connection whose publish failed handshakes with the broker, and
    behind a partition that handshake waited for ever)."""
    timeout = settings.broker_confirm_timeout_s
    return {"confirm_publish": True, "read_timeout": timeout, "write_timeout": timeout}


def publish_policy() -> dict[str, Any]:
    """Celery's ``task_publish_retry_policy``: no retry inside kombu, whose reconnect loop behind a partition
    took a connect timeout (4 s) per attempt on top of the confirm wait; ``send_confirmed`` retries instead."""
    return {"max_retries": 0}


def send_confirmed(send: Callable[[], Any], name: str, options: dict[str, Any], settings: Settings,
                   broker: Callable[[], str]) -> Any:
    """``send()`` until the broker confirmed it, trying again at once, then 1 s, 2 s, 4 s and 5 s apart; past
    ``broker_publish_timeout_s`` the last error is raised as ``BrokerUnavailableError``. A send with
    ``retry=False`` (a heartbeat, worth nothing late) is tried once."""
    give_up = time.monotonic() + settings.broker_publish_timeout_s
    pause = 0.0  # at once first: a connection that was merely dropped (an idle one a NAT forgot) just reconnects
    while True:
        try:
            return send()
        except PUBLISH_ERRORS as err:
            if options.get("retry") is False or time.monotonic() + pause > give_up:
                raise unavailable(name, options, broker(), settings, err) from err
            log.info("%s not confirmed by the broker (%s: %s); trying again in %gs", name, type(err).__name__,
                     err, pause)
        time.sleep(pause)
        pause = min(max(pause * 2, 1.0), 5.0)


def unavailable(name: str, options: dict[str, Any], broker: str, settings: Settings,
                err: BaseException) -> BrokerUnavailableError:
    """The error for task ``name`` that the broker at ``broker`` (a URL without its password) never confirmed."""
    where = options.get("queue") or options.get("routing_key") or "its queue"
    return BrokerUnavailableError(
        f"the broker at {broker} did not confirm {name} for {where} within {settings.broker_publish_timeout_s:g}s "
        f"({type(err).__name__}: {err}); is RabbitMQ reachable (`heurist doctor`)? "
        "HEURIST_BROKER_PUBLISH_TIMEOUT_S sets how long a publish keeps trying")


class ConfirmedProducers:
    """A producer pool whose connections publish in confirm mode, made on first use, closed with the app.
    ``connect`` makes the (lazy) connection with ``confirm_options`` among its transport options."""

    def __init__(self, connect: Callable[[], Connection], limit: int) -> None:
        self._connect, self._limit = connect, limit
        self._lock = threading.Lock()
        self._producers: ProducerPool | None = None

    def get(self) -> ProducerPool:
        with self._lock:
            if self._producers is None:
                connections = self._connect().Pool(limit=self._limit)
                self._producers = ProducerPool(connections, limit=self._limit)
            return self._producers

    def close(self) -> None:
        with self._lock:
            producers, self._producers = self._producers, None
        if producers is not None:
            producers.force_close_all()
            producers.connections.force_close_all()


def deliver(app: Celery, name: str, args: list[Any], queue: str, until: float, pause_s: float = 5.0) -> None:
    """Send a task the broker must have: each ``BrokerUnavailableError`` is logged and the send tried again,
    ``pause_s`` later, until the broker confirms it or ``until`` (epoch seconds) passes, which raises.

    For a miner's completion or failure report. Its job is done and its output uploaded, and a redelivered job
    message is refused as a replay (``workers.miner.admission``), so a report given up after one bounded
    publish lost the job until the sweep re-sent it, past its deadline: 1 of the 6 jobs in flight when the
    broker went away for 150 s. Waiting the outage out, the report arrives once the broker is back.
    """
    while True:
        try:
            app.send_task(name, args=args, queue=queue)
            return
        except BrokerUnavailableError as err:
            left = until - time.time()
            if left <= 0:
                raise
            log.warning("%s not confirmed (%s); trying again for %.0fs more", name, err, left)
            time.sleep(min(pause_s, left))
