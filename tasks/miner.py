"""The miner's task contract: one task, consumed from the model queues this miner can serve.

The task's argument is a ``SignedJob``. It runs only if admitted (``workers.miner.admission``); a refused
message is rejected without requeue (the broker dead-letters it) and logged, and the miner keeps serving.
The message's Celery ``timelimit`` header goes to the runtime, which enforces it (``heurist.time_limits``):
Celery does only in its prefork pool, and miners run ``threads`` or ``solo``.
The miner sends its signed completion, or its signed failure, to the ledger's inbox itself: whatever the
message says about callbacks is ignored (``heurist.unlinked``), so nobody can redirect a completion. Each is
confirmed by the broker and, while the broker is away, sent again until the job's deadline
(``heurist.confirms.deliver``).
"""

from __future__ import annotations

from typing import Any

from celery import Celery, Task
from celery.exceptions import Reject
from celery.utils.log import get_task_logger

from heurist.celery_app import services
from heurist.confirms import deliver
from heurist.errors import JobRefused
from tasks.names import RECORD_COMPLETION, RECORD_FAILURE, RUN_JOB

log = get_task_logger(__name__)

# How long past the deadline a report is still worth sending: the ledger judges lateness by the upload time and
# leaves a job alone for the sweep's grace (HEURIST_SWEEP_GRACE_S, 60 s) past its deadline, so a completion
# uploaded in time and confirmed within this still earns its points (most jobs finish in their last 10%).
REPORT_GRACE_S = 60.0


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
            completion = runtime.execute(job, producers=self.app.producer_pool, timelimit=self.request.timelimit)
        except Exception as err:
            report = runtime.failure(job, err).model_dump(mode="json")
            deliver(self.app, RECORD_FAILURE, [report], ledger_queue, until=job.deadline_at + REPORT_GRACE_S)
            raise
        deliver(self.app, RECORD_COMPLETION, [completion.model_dump(mode="json")], ledger_queue,
                until=job.deadline_at + REPORT_GRACE_S)
