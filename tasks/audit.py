"""The auditor's task contract, consumed from the trusted ``audit.<model>`` queues only."""

from __future__ import annotations

from typing import Any

from celery import Celery, Task

from heurist.celery_app import services
from tasks.names import AUDIT_JOB


def register_audit_tasks(app: Celery) -> None:
    """Declare ``replay_job`` on an app whose services hold the auditor (``workers.audit.auditor.Auditor``)."""

    @app.task(name=AUDIT_JOB, bind=True, acks_late=True, reject_on_worker_lost=True)
    def replay_job(self: Task, job_id: str) -> dict[str, Any]:
        """Replay a sampled job and append the verdict (and any penalty) to the ledger."""
        return services(self.app).auditor.audit(job_id)
