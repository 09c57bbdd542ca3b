"""Reserve every job's credits before any job is sent, and give them back when a job fails."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from heurist.credits.ledger import CreditLedger
from heurist.gateway.errors import ApiError

if TYPE_CHECKING:
    from heurist.gateway.images import Gateway
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


def wait_all(gw: Gateway, job_ids: list[str], timeout: float) -> list[JobView]:
    """Poll the ledger until every job is terminal; past ``timeout`` a 504 names the unfinished ones."""
    give_up = time.monotonic() + timeout
    while True:
        views = {v.job_id: v for v in gw.client.ledger.jobs(job_ids)}
        pending = [j for j in job_ids if j not in views or not views[j].state.terminal]
        if not pending:
            return [views[j] for j in job_ids]
        if time.monotonic() > give_up:
            raise ApiError(504, f"jobs {', '.join(pending)} not finished after {timeout:g}s; they keep running: "
                           "poll GET /v1/jobs/{id}", type_="timeout", code="job_timeout", job_ids=pending)
        time.sleep(gw.settings.result_poll_interval_s)
