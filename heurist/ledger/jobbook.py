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

from sqlalchemy import Engine, update

from heurist.catalog import ModelSpec
from heurist.db.engine import session_factory, session_scope
from heurist.errors import InvalidJobError
from heurist.jobs import ImageParams, JobState, PrivateEnvelope, TextParams
from heurist.ledger.tables import Job

log = logging.getLogger(__name__)


class JobBook:
    """Records jobs and their failures. Thread-safe: a session per call."""

    def __init__(self, engine: Engine, clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self.clock = clock
        self._sessions = session_factory(engine)

    def create_job(self, job_id: str, spec: ModelSpec, params: ImageParams | TextParams, output_key: str,
                   queue: str, deadline_at: float, sealed: PrivateEnvelope | None = None) -> None:
        """Record a job before it is sent: its parameters here are the only ones points are computed from.
        ``sealed``: a private job's envelope (``params`` are then its clear, billed-only copy), which every
        re-send carries again (``heurist.ledger.sweep``, ``heurist.ledger.redispatch``)."""
        if params.kind is not spec.kind:
            raise InvalidJobError(f"model {spec.id} runs {spec.kind.value} jobs, not {params.kind.value}")
        row = Job(id=job_id, model_id=spec.id, kind=spec.kind, params=params.model_dump(mode="json"),
                  queue=queue, state=JobState.QUEUED, output_key=output_key, created_at=self.clock(),
                  deadline_at=deadline_at, sealed=None if sealed is None else sealed.model_dump(mode="json"))
        with session_scope(self._sessions) as session:
            session.add(row)

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


__all__ = ["JobBook"]
