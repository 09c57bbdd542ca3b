"""The miner's task contract: one task, consumed from the model queues this miner can serve.

The task's argument is a ``SignedJob``. It runs only if admitted (``workers.miner.admission``); a refused
message is rejected without requeue (the broker dead-letters it) and logged, and the miner keeps serving.
The miner sends its signed completion, or its signed failure, to the ledger's inbox itself: whatever the
message says about callbacks is ignored (``heurist.unlinked``), so nobody can redirect a completion.
"""

from __future__ import annotations

from typing import Any

from celery import Celery, Task
from celery.exceptions import Reject
from celery.utils.log import get_task_logger

from heurist.celery_app import services
from heurist.errors import JobRefused
from tasks.names import RECORD_COMPLETION, RECORD_FAILURE, RUN_JOB

log = get_task_logger(__name__)


def register_miner_tasks(app: Celery, ledger_queue: str) -> None:
    """Declare ``run_job`` on a miner app whose services hold the runtime with the pipelines loaded at start;
    completions and failures go to ``ledger_queue`` (routed by ``heurist.access.miner_app.confine_miner``)."""

    @app.task(name=RUN_JOB, bind=True, acks_late=True, reject_on_worker_lost=True)
    def run_job(self: Task, signed: Any) -> None:
        """Admit a signed job, run it, and report to the ledger."""
        runtime = services(self.app).miner_runtime
        try:
            job = runtime.admit(signed)
        except JobRefused as refused:
            log.warning("refused job message %s: %s", self.request.id, refused)
            raise Reject(str(refused), requeue=False) from None
        try:
            completion = runtime.execute(job, producers=self.app.producer_pool)
        except Exception as err:
            report = runtime.failure(job, err).model_dump(mode="json")
            self.app.send_task(RECORD_FAILURE, args=[report], queue=ledger_queue)
            raise
        self.app.send_task(RECORD_COMPLETION, args=[completion.model_dump(mode="json")], queue=ledger_queue)
