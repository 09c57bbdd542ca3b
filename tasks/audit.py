"""The auditor's task contract, consumed from the trusted ``audit.<model>`` queues only."""

from __future__ import annotations

from typing import Any

from celery import Celery, Task
from sqlalchemy.exc import OperationalError

from heurist.celery_app import services
from heurist.errors import StorageError
from tasks.names import AUDIT_JOB


def register_audit_tasks(app: Celery) -> None:
    """Declare ``replay_job`` on an app whose services hold the auditor (``workers.audit.auditor.Auditor``)."""

    # Storage or the database away (a SeaweedFS restart answered GETs with 500 for ~4 s): retried with back-off
    # (1 s doubling to 30 s) without limit, not acked and lost (test_supervision lost 5 of 13 audits so).
    @app.task(name=AUDIT_JOB, bind=True, acks_late=True, reject_on_worker_lost=True,
              autoretry_for=(StorageError, OperationalError), max_retries=None, retry_backoff=1,
              retry_backoff_max=30, retry_jitter=True)
    def replay_job(self: Task, job_id: str) -> dict[str, Any]:
        """Replay a sampled job and append the verdict (and any penalty) to the ledger."""
        return services(self.app).auditor.audit(job_id)
