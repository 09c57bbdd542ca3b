"""The ledger's side of pushed verdicts: after a verdict commits, tell the job's client on ``heurist.verdicts``.

``VerdictPublisher`` is a ledger middleware (``after_accept``: credited or late) and a listener of the ledger's
job book (``JobBook.on_ended``: a failure recorded by the trusted side, a redispatch giving up, the stranded-job
sweep). Either only queues; a daemon thread takes whatever has queued up and publishes a notice per ended job
that has a key. So a verdict never waits on the broker.

- A credit's notice is ready when it is queued: the ledger read the job's notify key with the job, and
  describes the job as it just committed it (``Accepted.view``, made by ``Ledger._credited``), sealed for the
  client (``heurist.verdicts.notice``), which then reads nothing. It is the first hook after the commit
  (``Ledger.record_completion``), ahead of the outbox's fast path. In a trace of ``heurist bench latency`` (null
  jobs, one at a time, PostgreSQL) the commit to the client's notice took 6.3 ms, now 1.2: the audit sample's
  publish (2.7 to 3.7 ms) no longer goes first, and the publisher's query of the row is gone.
- Any other ended job is queued by id: the thread reads those rows as a client would (``LedgerReader.jobs``), one
  query per batch, so the notice carries the job as committed, whichever path ended it.

Publishing is best-effort: unconfirmed, transient, never retried. A failure is logged (once per outage) and
the connection made again for the next batch; the client's fallback poll finds that verdict.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterable

from celery import Celery
from kombu import Connection, Producer
from sqlalchemy import Engine

from heurist.ledger.middleware import Accepted, LedgerMiddleware
from heurist.ledger.reader import LedgerReader
from heurist.ledger.service import Ledger
from heurist.settings import Settings
from heurist.verdicts.notice import EXCHANGE, VerdictNotice, notifies, routing_key, sealed

log = logging.getLogger(__name__)

BATCH = 500  # job ids per query (IN lists stay short)
_Ready = tuple[str, VerdictNotice]  # a notice and its client's notify key


class VerdictPublisher(LedgerMiddleware):
    """Publishes the verdicts of the jobs it is told about (``announce``), on connections from ``connect``."""

    def __init__(self, connect: Callable[[], Connection], engine: Engine) -> None:
        self._connect = connect
        self.reader = LedgerReader(engine)
        self._pending: queue.SimpleQueue[str | _Ready] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._conn: Connection | None = None
        self._producer: Producer | None = None
        self._failing = False
        self.published = 0  # notices handed to the broker (tests and operators read it)

    def after_accept(self, ledger: Ledger, accepted: Accepted) -> None:
        """A credit just committed: its notice is queued as it is, nothing read again (the ledger sets ``view`` on
        every credit it hands to this hook: ``Ledger.record_completion``)."""
        key, view = accepted.notify_key, accepted.view
        if key is not None and view is not None:
            self._queue([(key, sealed(key, view))])

    def announce(self, job_ids: Iterable[str]) -> None:
        """Jobs whose verdict just committed: their clients are told soon, on the publisher's thread."""
        self._queue(job_ids)

    def _queue(self, items: Iterable[str | _Ready]) -> None:
        for item in items:
            self._pending.put(item)
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="heurist-verdict-notices", daemon=True)
                self._thread.start()

    def publish(self, job_ids: Iterable[str]) -> int:
        """Publish a notice for each of ``job_ids`` that has ended and has a client listening; how many."""
        ids = list(dict.fromkeys(job_ids))
        notices: list[_Ready] = []
        for start in range(0, len(ids), BATCH):
            notices += [(view.notify_key, sealed(view.notify_key, view))
                        for view in self.reader.jobs(ids[start:start + BATCH])
                        if view.notify_key is not None and view.state.terminal]
        return self._send(notices)

    def _send(self, notices: list[_Ready]) -> int:
        """Publish ``notices`` (each to its client's key); how many."""
        if not notices:
            return 0
        producer = self._connected()
        for key, notice in notices:
            producer.publish(notice.model_dump_json(), exchange=EXCHANGE, routing_key=routing_key(key),
                             declare=[EXCHANGE], content_type="application/json", content_encoding="utf-8",
                             retry=False)
        self.published += len(notices)
        return len(notices)

    def close(self) -> None:
        with self._lock:
            conn, self._conn, self._producer = self._conn, None, None
        if conn is not None:
            conn.release()

    def _connected(self) -> Producer:
        if self._producer is None:
            self._conn = self._connect()
            self._producer = Producer(self._conn.channel())
        return self._producer

    def _run(self) -> None:
        while True:
            items = [self._pending.get()]
            while len(items) < BATCH:
                try:
                    items.append(self._pending.get_nowait())
                except queue.Empty:
                    break
            ids = [item for item in items if isinstance(item, str)]
            try:
                self._send([item for item in items if not isinstance(item, str)])
                if ids:
                    self.publish(ids)
            except Exception as err:  # never the verdict's problem: the client's fallback poll finds it
                self.close()
                if not self._failing:
                    log.warning("verdict notices for %d job(s) not published (%s: %s); their clients find the "
                                "verdicts by their fallback poll", len(items), type(err).__name__, err)
                self._failing = True
            else:
                if self._failing:
                    log.warning("verdict notices are published again")
                self._failing = False


def install_verdicts(app: Celery, settings: Settings, ledger: Ledger) -> VerdictPublisher | None:
    """Make ``ledger`` publish its verdicts (on RabbitMQ, unless turned off): after each acceptance, and after
    each job its book ends (the sweep's failures go through ``ledger.book`` too). None when not pushed."""
    if not notifies(settings):
        return None
    publisher = VerdictPublisher(app.connection_for_write, ledger.engine)
    ledger.middleware.append(publisher)
    ledger.book.on_ended.append(publisher.announce)
    return publisher


__all__ = ["VerdictPublisher", "install_verdicts"]
