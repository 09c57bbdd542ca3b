"""Reserve every job's credits before any job is sent, and give them back when a job fails."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from heurist.client import Client, LedgerUnavailableError
from heurist.credits.ledger import CreditLedger
from heurist.errors import JobTimeoutError
from heurist.gateway.errors import ApiError, from_heurist

if TYPE_CHECKING:
    from heurist.ledger.reader import JobView


def reserve_all(credits: CreditLedger, key_id: int, job_ids: Sequence[str], prices: Sequence[float]) -> None:
    """All or nothing: if job k cannot be paid, the k-1 reservations already made are refunded and the
    error (402) propagates, so a request that would overdraw sends no job at all."""
    done: list[str] = []
    try:
        for job_id, price in zip(job_ids, prices, strict=True):
            credits.reserve(key_id, job_id, price)
            done.append(job_id)
    except BaseException:
        refund_all(credits, done)
        raise


def refund_all(credits: CreditLedger, job_ids: Sequence[str]) -> float:
    """Refund jobs that will never deliver (idempotent per job); returns the units given back."""
    return sum(credits.refund(job_id) for job_id in job_ids)


def wait_all(client: Client, job_ids: list[str], timeout: float) -> list[JobView]:
    """``Client.wait_all``, which waits through a database outage; past ``timeout`` a 504 names the unfinished
    jobs, which keep running, or a 503 names the database when it was still away (``errors.from_heurist``)."""
    try:
        return client.wait_all(job_ids, timeout)
    except LedgerUnavailableError as err:
        raise from_heurist(err) from None
    except JobTimeoutError as err:
        pending = list(err.job_ids)
        raise ApiError(504, f"jobs {', '.join(pending)} not finished after {timeout:g}s; they keep running: "
                       "poll GET /v1/jobs/{id}", type_="timeout", code="job_timeout", job_ids=pending) from None
