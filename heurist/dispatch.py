"""Sending a recorded job to its miners' queue: one place, for the client and the ledger's redispatch.

The job message carries a fresh presigned PUT URL for the job's output key; its completion reaches the
ledger as the task's Celery ``link`` and a raised task as its ``link_error``, both on the ledger queue.
"""

from __future__ import annotations

from celery import Celery
from celery.canvas import Signature

from heurist.jobs import ImageParams, JobMessage, TextParams
from heurist.storage.backend import ObjectStore
from tasks.names import RECORD_COMPLETION, RECORD_FAILURE, RUN_JOB


def job_message(job_id: str, model_id: str, params: ImageParams | TextParams, output_key: str,
                deadline_at: float, store: ObjectStore, expiry_s: int) -> JobMessage:
    """What a miner receives: the job and where to put its output, nothing more."""
    return JobMessage(job_id=job_id, model_id=model_id, params=params,
                      output_url=store.presign_put(output_key, expiry_s), deadline_at=deadline_at)


def send_job(app: Celery, message: JobMessage, queue: str, ledger_queue: str) -> None:
    """Enqueue ``message`` on ``queue`` with the ledger callbacks attached."""
    app.send_task(
        RUN_JOB,
        args=[message.model_dump(mode="json")],
        task_id=message.job_id,
        queue=queue,
        link=Signature(RECORD_COMPLETION, app=app, queue=ledger_queue),
        link_error=Signature(RECORD_FAILURE, app=app, queue=ledger_queue),
    )
