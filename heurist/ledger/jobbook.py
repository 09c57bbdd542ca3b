"""Jobs as their submitter records them: created before they are sent, failed when sending or running fails.

These are the only writes a client (and the gateway through it) makes to the ledger, so they stand apart from
verification (``heurist.ledger.service.Ledger``, which needs the catalog and object storage): the client
holds a ``JobBook`` and a ``LedgerReader``, nothing that can credit points. The ledger consumer's failure
reports (a miner's task raised) come through its ``Ledger``, which keeps a book of its own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from sqlalchemy import Engine, true, update

from heurist.catalog import ModelSpec
from heurist.db.engine import session_factory, session_scope
from heurist.errors import InvalidJobError
from heurist.jobs import ImageParams, JobState, TextParams
from heurist.ledger.tables import Job

log = logging.getLogger(__name__)


class JobBook:
    """Records jobs and their failures. Thread-safe: a session per call."""

    def __init__(self, engine: Engine, clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self.clock = clock
        self._sessions = session_factory(engine)

    def create_job(self, job_id: str, spec: ModelSpec, params: ImageParams | TextParams, output_key: str,
                   queue: str, deadline_at: float) -> None:
        """Record a job before it is sent: its parameters here are the only ones points are computed from."""
        if params.kind is not spec.kind:
            raise InvalidJobError(f"model {spec.id} runs {spec.kind.value} jobs, not {params.kind.value}")
        row = Job(id=job_id, model_id=spec.id, kind=spec.kind, params=params.model_dump(mode="json"),
                  queue=queue, state=JobState.QUEUED, output_key=output_key, created_at=self.clock(),
                  deadline_at=deadline_at)
        with session_scope(self._sessions) as session:
            session.add(row)

    def record_failure(self, job_id: str, reason: str, *, from_miner: bool = False) -> None:
        """A miner (or the broker) reported an error: the job ends FAILED unless it already has a verdict.
        A valid completion arriving later is still verified and credited.

        ``from_miner``: the report is about one copy of the job's message. Once the stranded-job sweep re-sent
        the job (``heurist.ledger.sweep``), an older copy may still sit in a queue, and the miner that takes it
        refuses it as expired; so such reports are ignored until the current copy's deadline has passed too.
        A real failure of the current copy then waits for the sweep, which re-sends or fails the job."""
        now = self.clock()
        stale_copy_possible = (Job.resends > 0) & (Job.deadline_at > now)
        with session_scope(self._sessions) as session:
            done = session.execute(
                update(Job).where(Job.id == job_id, Job.state == JobState.QUEUED,
                                  ~stale_copy_possible if from_miner else true())
                .values(state=JobState.FAILED, error=reason, finished_at=now)
            )
        if done.rowcount == 0:  # type: ignore[attr-defined]
            log.info("failure report for job %s ignored: unknown or already terminal", job_id)


__all__ = ["JobBook"]
