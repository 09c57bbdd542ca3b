"""An accepted completion's claims as the ledger stored them: what the metric and weight checks judge."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from heurist.jobs import DeviceInfo, ImageParams, TextParams, Timings
from heurist.ledger.reader import PARAMS
from heurist.ledger.tables import CompletionRow, Job, Miner


@dataclass(frozen=True)
class AcceptedClaim:
    """One job's accepted completion: its signed claims, the job's own parameters, and the ledger's clock."""

    job_id: str
    miner: str
    model_id: str
    params: ImageParams | TextParams
    timings: Timings
    device: DeviceInfo
    input_tokens: int
    output_tokens: int
    weights_sha256: str | None  # None for completions accepted before attestation existed
    wall_s: float  # job created -> completion received, by the ledger's clock
    registered_device: DeviceInfo | None


def read_claim(engine: Engine, job_id: str) -> AcceptedClaim | None:
    """The accepted claim of ``job_id``, or None if it has none."""
    stmt = (select(Job, CompletionRow, Miner.device).join(CompletionRow, CompletionRow.job_id == Job.id)
            .outerjoin(Miner, Miner.address == CompletionRow.miner_address).where(Job.id == job_id))
    with Session(engine) as session:
        row = session.execute(stmt).tuples().first()
    if row is None:
        return None
    job, completion, registered = row
    return AcceptedClaim(
        job_id=job.id, miner=completion.miner_address, model_id=job.model_id,
        params=PARAMS.validate_python(job.params), timings=Timings.model_validate(completion.timings),
        device=DeviceInfo.model_validate(completion.device), input_tokens=completion.input_tokens,
        output_tokens=completion.output_tokens,
        weights_sha256=completion.weights_sha256, wall_s=completion.received_at - job.created_at,
        registered_device=DeviceInfo.model_validate(registered) if registered else None,
    )
