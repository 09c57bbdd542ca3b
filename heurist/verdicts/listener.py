"""The client's side of pushed verdicts: one queue per client, consumed on a daemon thread, and watches.

``VerdictListener`` binds an exclusive, auto-deleted queue to ``heurist.verdicts`` with the client's notify key
and takes notices off it on its own thread and connection (with heartbeats, so a partition is noticed within
2-3 of them). ``wait_all`` holds a ``Watch`` over its job ids while it waits: a notice for one of them wakes it.
Every waiting thread of a process shares the one listener (the gateway waits in many threads at once).

A notice whose view is sealed under this listener's key (``heurist.verdicts.notice``) hands the wait the job's
view, which it then does not read; any other notice for a watched job only wakes it, to read the row.

A notice that arrives while nobody watches its job is dropped: a wait reads all its jobs once when it starts,
so a job that ended before the wait began is found by that read. When the connection drops, and again when
it is back (a new queue: notices sent in between are lost), every watch is told to read all its jobs again;
while it is down, waits poll at ``result_poll_interval_s`` (``heurist.client``).
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING

from kombu import Connection, Consumer, Message, Queue

from heurist.verdicts.notice import (
    EXCHANGE,
    EXCHANGE_NAME,
    MAX_NOTICE_BYTES,
    VerdictNotice,
    new_notify_key,
    opened,
    routing_key,
)

if TYPE_CHECKING:
    from heurist.ledger.reader import JobView

log = logging.getLogger(__name__)

DRAIN_S = 0.25  # the thread looks at its stop flag and sends heartbeats at least this often


class Watch:
    """One wait's view of the listener: its jobs notified and not yet taken (with the sealed view each notice
    brought, or None), and whether to read all."""

    def __init__(self, listener: VerdictListener, job_ids: set[str]) -> None:
        self.listener, self.job_ids = listener, job_ids
        self._notified: dict[str, JobView | None] = {}
        self._generation = listener.generation

    def take(self) -> tuple[dict[str, JobView | None], bool]:
        """The jobs notified since the last take (each with its sealed view, None: read the row), and True if
        every job must be read again (the listener connected or dropped since: notices may have been lost)."""
        with self.listener.cond:
            ids, self._notified = self._notified, {}
            full = self._generation != self.listener.generation
            self._generation = self.listener.generation
        return ids, full

    def wait(self, timeout: float) -> None:
        """Until a notice for one of the jobs, a change of connection, or ``timeout`` seconds."""
        if timeout <= 0:
            return
        with self.listener.cond:
            self.listener.cond.wait_for(lambda: bool(self._notified) or self._generation != self.listener.generation,
                                        timeout)


class VerdictListener:
    """A client's verdict queue (routing key ``key``), on connections from ``connect``; ``start`` it once."""

    def __init__(self, connect: Callable[[], Connection], key: str | None = None, *, retry_s: float = 0.5,
                 max_retry_s: float = 5.0) -> None:
        self.key = key or new_notify_key()
        self.cond = threading.Condition()
        self.generation = 0  # bumped on every connect and every drop
        self.connected = False
        self.received = 0  # notices taken off the queue (valid or not): tests and operators read it
        self.queue: str | None = None  # the current connection's queue
        self._connect, self._retry_s, self._max_retry_s = connect, retry_s, max_retry_s
        self._watches: dict[str, list[Watch]] = defaultdict(list)
        self._stop = threading.Event()
        self._first_try = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, wait_s: float = 0.0) -> VerdictListener:
        """Start consuming (idempotent); wait at most ``wait_s`` for the first connection attempt. Nothing needs
        to: a job whose notice came before the queue was bound is found by the read of every job that each
        wait makes when it starts and when the listener connects. A submit never waits for it (behind a
        partition the attempt takes a connect timeout, 4 s); until it connects, waits poll."""
        with self.cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="heurist-verdicts", daemon=True)
                self._thread.start()
        self._first_try.wait(wait_s)
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2 * DRAIN_S + 1)

    @contextmanager
    def watch(self, job_ids: Iterable[str]) -> Iterator[Watch]:
        """Wake on notices for ``job_ids`` while the block runs."""
        watch = Watch(self, set(job_ids))
        with self.cond:
            for job_id in watch.job_ids:
                self._watches[job_id].append(watch)
        try:
            yield watch
        finally:
            with self.cond:
                for job_id in watch.job_ids:
                    waiting = self._watches.get(job_id)
                    if waiting is not None:
                        waiting.remove(watch)
                        if not waiting:
                            del self._watches[job_id]

    def _run(self) -> None:
        pause, failures = self._retry_s, 0
        while not self._stop.is_set():
            try:
                with self._connect() as conn:
                    self._consume(conn)
                    pause, failures = self._retry_s, 0
                    self._serve(conn)
            except Exception as err:  # the broker is away: waits poll until it is back
                failures += 1
                if failures == 1:
                    log.warning("verdict notices: no connection to the broker (%s: %s); waits poll the ledger "
                                "until it is back", type(err).__name__, err)
            finally:
                self._set_connected(False)
                self._first_try.set()
            self._stop.wait(pause)
            pause = min(pause * 2, self._max_retry_s)

    def _consume(self, conn: Connection) -> None:
        # A fresh name per connection: the previous connection's exclusive queue may outlive it on the broker
        # for a moment (until the broker notices), and re-declaring it would be refused as locked.
        queue = Queue(f"{EXCHANGE_NAME}.{uuid.uuid4().hex}", EXCHANGE, routing_key=routing_key(self.key),
                      exclusive=True, auto_delete=True, durable=False)
        consumer = Consumer(conn.channel(), queues=[queue], no_ack=True, on_message=self._on_message)
        consumer.consume()  # declares the exchange and the queue, binds it, then consumes
        self.queue = queue.name
        self._set_connected(True)
        self._first_try.set()

    def _serve(self, conn: Connection) -> None:
        while not self._stop.is_set():
            with suppress(TimeoutError):
                conn.drain_events(timeout=DRAIN_S)
            conn.heartbeat_check()  # after every drain: a busy queue must not starve the heartbeats (py-amqp
            # sends one only when due)

    def _set_connected(self, connected: bool) -> None:
        with self.cond:
            if connected != self.connected:
                self.connected = connected
                self.generation += 1
                self.cond.notify_all()

    def _on_message(self, message: Message) -> None:
        """Parsed as JSON by hand, whatever its content type says: nothing on this queue is ever unpickled."""
        body = message.body
        with self.cond:
            self.received += 1
        if not isinstance(body, bytes | str) or len(body) > MAX_NOTICE_BYTES:
            return
        try:
            notice = VerdictNotice.model_validate_json(body)
        except ValueError:
            log.info("verdict notices: dropped a malformed message")
            return
        view = opened(notice, self.key)
        with self.cond:
            waiting = self._watches.get(notice.job_id, [])
            for watch in waiting:
                if view is not None or notice.job_id not in watch._notified:  # a wake-up never drops a view
                    watch._notified[notice.job_id] = view
            if waiting:
                self.cond.notify_all()


__all__ = ["VerdictListener", "Watch"]
