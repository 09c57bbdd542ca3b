"""GET /v1/jobs/{id}: a job's public state, visible only to the key that paid for it."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from starlette.concurrency import run_in_threadpool

from heurist.credits.tables import ApiKey
from heurist.errors import public_failure
from heurist.gateway.deps import ERRORS, Gateway, gateway, limited_key
from heurist.gateway.errors import ApiError
from heurist.gateway.schemas import JobStatus
from heurist.jobs import JobState

router = APIRouter(tags=["jobs"])
ENDED_BADLY = (JobState.FAILED, JobState.REJECTED)


def _not_found(job_id: str) -> ApiError:
    return ApiError(404, f"no job {job_id} for this API key", param="id", code="job_not_found")


def job_status(gw: Gateway, key_id: int, job_id: str) -> JobStatus:
    """The owner is the key whose credits reserved the job; another key gets the same 404 as an unknown id,
    so ids cannot be probed. A job found failed, or whose output failed its audit, is refunded here too
    (idempotent; the gateway's reconcile sweep does it otherwise), which covers jobs whose request timed out
    (504) before they ended."""
    reservation = gw.credits.reservation(job_id)
    view = gw.client.ledger.job(job_id) if reservation is not None and reservation.key_id == key_id else None
    if view is None:
        raise _not_found(job_id)
    failed_audit = view.state.has_output and gw.client.ledger.audit_failed(job_id)
    refunded = view.state in ENDED_BADLY or failed_audit
    if refunded:
        gw.credits.refund(job_id)
    url = None if failed_audit else gw.client.to_result(view).url  # an output that failed its audit: not served
    return JobStatus(id=view.job_id, model=view.model_id, kind=view.kind.value, state=view.state.value,
                     created_at=view.created_at, finished_at=view.finished_at, url=url,
                     error=public_failure(view.job_id, view.state, view.error) if view.state in ENDED_BADLY else None,
                     audit="failed" if failed_audit else None, refunded=refunded)


@router.get("/v1/jobs/{job_id}", response_model=JobStatus, responses=ERRORS)
async def get_job(job_id: str, gw: Gateway = Depends(gateway), key: ApiKey = Depends(limited_key)) -> JobStatus:
    """A job's state, model, output URL once done, and error; 404 for unknown jobs and other keys' jobs."""
    return await run_in_threadpool(job_status, gw, key.id, job_id)
