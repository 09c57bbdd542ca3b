"""The miner's task contract: one task, consumed from the model queues this miner can serve."""

from __future__ import annotations

from typing import Any

from celery import Celery, Task

from heurist.celery_app import services
from heurist.jobs import JobMessage
from tasks.names import RUN_JOB


def register_miner_tasks(app: Celery) -> None:
    """Declare ``run_job`` on a miner app whose services hold the runtime with the pipelines loaded at start."""

    @app.task(name=RUN_JOB, bind=True, acks_late=True, reject_on_worker_lost=True)
    def run_job(self: Task, job: dict[str, Any]) -> dict[str, Any]:
        """Run a job; the returned signed completion goes to the ledger as this task's link callback."""
        signed = services(self.app).miner_runtime.execute(JobMessage.model_validate(job),
                                                          producers=self.app.producer_pool)
        return signed.model_dump(mode="json")
