"""Sending a recorded job to its miners' queue: one place, for the client and the ledger's redispatch.

The job message carries a fresh presigned PUT URL for the job's output key; its completion reaches the
ledger as the task's Celery ``link`` and a raised task as its ``link_error``, both on the ledger queue.
The URL expires at the job's deadline (``upload_expiry_s``). Every miner of the tier can read the
message, and a URL that outlived the deadline (it used to live ``presign_expiry_s``, 3,600 s) let anybody
overwrite the output long after the job was done.
"""

from __future__ import annotations

import math
import time

from celery import Celery
from celery.canvas import Signature

from heurist.errors import HeuristError
from heurist.jobs import ImageParams, JobMessage, TextParams
from heurist.storage.backend import ObjectStore
from tasks.names import RECORD_COMPLETION, RECORD_FAILURE, RUN_JOB


class DeadlinePassedError(HeuristError):
    """The job's deadline is less than a second away: no upload URL can still be valid, so it is not sent."""


def upload_expiry_s(deadline_at: float, now: float, cap_s: int) -> int:
    """Seconds a PUT URL presigned at ``now`` may live: until the deadline, at most ``cap_s``
    (``Settings.presign_expiry_s``).

    SigV4 counts whole seconds from ``X-Amz-Date``, which is ``now`` floored, so flooring the time left keeps
    the expiry at or before the deadline. A deadline less than 1 s away raises DeadlinePassedError.
    """
    left = math.floor(deadline_at - now)
    if left < 1:
        raise DeadlinePassedError(f"the job's deadline passed {now - deadline_at:.1f}s ago (or is under 1 s away): "
                                  "no upload URL can be valid; submit it again")
    return min(left, cap_s)


def job_message(job_id: str, model_id: str, params: ImageParams | TextParams, output_key: str,
                deadline_at: float, store: ObjectStore, expiry_s: int, *, now: float | None = None) -> JobMessage:
    """What a miner receives: the job and where to put its output, nothing more. The PUT URL lives until
    the deadline, capped at ``expiry_s``; ``now`` is the clock the deadline was set by (default: time.time)."""
    lifetime = upload_expiry_s(deadline_at, time.time() if now is None else now, expiry_s)
    return JobMessage(job_id=job_id, model_id=model_id, params=params,
                      output_url=store.presign_put(output_key, lifetime), deadline_at=deadline_at)


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
