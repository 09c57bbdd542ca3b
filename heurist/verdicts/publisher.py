"""The ledger's side of pushed verdicts: after a verdict commits, tell the job's client on ``heurist.verdicts``.

``VerdictPublisher`` is a ledger middleware (``after_accept``: credited or late) and a listener of the ledger's
job book (``JobBook.on_ended``: a failure recorded by the trusted side, a redispatch giving up, the stranded-job
sweep). Either only queues the job id; a daemon thread takes whatever has queued up, reads those rows'
state and notify key in one query, and publishes a notice per ended job that has a key. So a verdict never
waits on the broker, a burst of verdicts costs one query per batch, and the notice carries the state as
committed, whichever path ended the job.

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
from sqlalchemy import Engine, select

from heurist.db.engine import session_factory
from heurist.ledger.middleware import Accepted, LedgerMiddleware
from heurist.ledger.service import Ledger
from heurist.ledger.tables import Job
from heurist.settings import Settings
from heurist.verdicts.notice import EXCHANGE, VerdictNotice, notifies

log = logging.getLogger(__name__)

BATCH = 500  # job ids per query (IN lists stay short)


class VerdictPublisher(LedgerMiddleware):
    """Publishes the verdicts of the jobs it is told about (``announce``), on connections from ``connect``."""

    def __init__(self, connect: Callable[[], Connection], engine: Engine) -> None:
        self._connect = connect
        self._sessions = session_factory(engine)
        self._pending: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._conn: Connection | None = None
        self._producer: Producer | None = None
        self._failing = False
        self.published = 0  # notices handed to the broker (tests and operators read it)

    def after_accept(self, ledger: Ledger, accepted: Accepted) -> None:
        self.announce([accepted.job_id])

    def announce(self, job_ids: Iterable[str]) -> None:
        """Jobs whose verdict just committed: their clients are told soon, on the publisher's thread."""
        for job_id in job_ids:
            self._pending.put(job_id)
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="heurist-verdict-notices", daemon=True)
                self._thread.start()

    def publish(self, job_ids: Iterable[str]) -> int:
        """Publish a notice for each of ``job_ids`` that has ended and has a client listening; how many."""
        ids = list(dict.fromkeys(job_ids))
        notices: list[tuple[str, VerdictNotice]] = []
        for start in range(0, len(ids), BATCH):
            stmt = select(Job.id, Job.state, Job.notify_key).where(Job.id.in_(ids[start:start + BATCH]),
                                                                   Job.notify_key.is_not(None))
            with self._sessions() as session:
                rows = session.execute(stmt).all()
            notices += [(str(key), VerdictNotice(job_id=job_id, state=state)) for job_id, state, key in rows
                        if state.terminal]
        producer = self._connected()
        for key, notice in notices:
            producer.publish(notice.model_dump_json(), exchange=EXCHANGE, routing_key=key, declare=[EXCHANGE],
                             content_type="application/json", content_encoding="utf-8", retry=False)
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
            ids = [self._pending.get()]
            while len(ids) < BATCH:
                try:
                    ids.append(self._pending.get_nowait())
                except queue.Empty:
                    break
            try:
                self.publish(ids)
            except Exception as err:  # never the verdict's problem: the client's fallback poll finds it
                self.close()
                if not self._failing:
                    log.warning("verdict notices for %d job(s) not published (%s: %s); their clients find the "
                                "verdicts by their fallback poll", len(ids), type(err).__name__, err)
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
