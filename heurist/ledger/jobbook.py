"""Jobs as their submitter records them: created before they are sent, failed when sending or running fails.

These are the only writes a client (and the gateway through it) makes to the ledger, so they stand apart from
verification (``heurist.ledger.service.Ledger``, which needs the catalog and object storage): the client
holds a ``JobBook`` and a ``LedgerReader``, nothing that can credit points. The ledger consumer's failure
reports (a miner's task raised) come through its ``Ledger``, which keeps a book of its own.

``create_jobs`` records many jobs in one INSERT (``Client.map``): one row per statement and commit cost the
client 7 ms a job on PostgreSQL, a fifth of `heurist bench path`'s full path. A job ended here, or by anyone
who calls ``ended``, is announced to ``on_ended`` (the ledger's verdict publisher: ``heurist.verdicts``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import Engine, insert, update

from heurist.catalog import ModelSpec
from heurist.db.engine import session_factory, session_scope
from heurist.errors import InvalidJobError
from heurist.jobs import ImageParams, JobState, PrivateEnvelope, TextParams
from heurist.ledger.tables import Job

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NewJob:
    """A job about to be sent, as ``JobBook.create_jobs`` records it. ``sealed``: a private job's envelope
    (``params`` are then its clear, billed-only copy), which every re-send carries again (``heurist.ledger.sweep``,
    ``heurist.ledger.redispatch``); ``notify_key``: where its client listens for the verdict (``heurist.verdicts``)."""

    job_id: str
    spec: ModelSpec
    params: ImageParams | TextParams
    output_key: str
    queue: str
    deadline_at: float
    sealed: PrivateEnvelope | None = None
    notify_key: str | None = None


class JobBook:
    """Records jobs and their failures. Thread-safe: a session per call."""

    def __init__(self, engine: Engine, clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self.clock = clock
        self._sessions = session_factory(engine)
        self.on_ended: list[Callable[[Sequence[str]], None]] = []  # told the ids of jobs ended through this book

    def create_job(self, job_id: str, spec: ModelSpec, params: ImageParams | TextParams, output_key: str,
                   queue: str, deadline_at: float, sealed: PrivateEnvelope | None = None,
                   notify_key: str | None = None) -> None:
        """Record a job before it is sent: its parameters here are the only ones points are computed from
        (``NewJob`` says what the others are)."""
        self.create_jobs([NewJob(job_id, spec, params, output_key, queue, deadline_at, sealed, notify_key)])

    def create_jobs(self, jobs: Sequence[NewJob]) -> None:
        """Record jobs before they are sent, all or none, in one INSERT (InvalidJobError before any write if one
        job's parameters are not of its model's kind)."""
        for job in jobs:
            if job.params.kind is not job.spec.kind:
                raise InvalidJobError(f"model {job.spec.id} runs {job.spec.kind.value} jobs, not "
                                      f"{job.params.kind.value}")
        if not jobs:
            return
        now = self.clock()
        rows = [{"id": job.job_id, "model_id": job.spec.id, "kind": job.spec.kind,
                 "params": job.params.model_dump(mode="json"), "queue": job.queue, "state": JobState.QUEUED,
                 "output_key": job.output_key, "created_at": now, "deadline_at": job.deadline_at,
                 "sealed": None if job.sealed is None else job.sealed.model_dump(mode="json"),
                 "notify_key": job.notify_key} for job in jobs]
        with session_scope(self._sessions) as session:
            session.execute(insert(Job), rows)

    def record_failure(self, job_id: str, reason: str) -> None:
        """The trusted side ends a job without a result (the client could not enqueue it, a redispatch could
        not send it, an operator): FAILED, final, unless it already has a verdict. Miners' reports never end a
        job (``heurist.ledger.failures``); the stranded-job sweep fails jobs itself, with the same condition."""
        now = self.clock()
        with session_scope(self._sessions) as session:
            done = session.execute(update(Job).where(Job.id == job_id, Job.state == JobState.QUEUED)
                                   .values(state=JobState.FAILED, error=reason, finished_at=now))
        if done.rowcount == 0:  # type: ignore[attr-defined]
            log.info("failure of job %s not recorded: unknown or already ended", job_id)
        else:
            self.ended([job_id])

    def ended(self, job_ids: Sequence[str]) -> None:
        """Announce jobs whose end has committed to ``on_ended``; a listener that raises is logged."""
        for listener in self.on_ended:
            try:
                listener(job_ids)
            except Exception:
                log.exception("job book listener %r failed", listener)


__all__ = ["JobBook", "NewJob"]
