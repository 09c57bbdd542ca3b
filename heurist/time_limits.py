"""A job's time limits, derived from its deadline: carried in its message, enforced by the miner.

Each job message carries Celery's ``timelimit`` header (``send_task(time_limit=, soft_time_limit=)``, seconds
from the task's start), computed here from the time left to its deadline when it is sent:

- **soft limit** = time left - the upload reserve (10% of it, at most 30 s). By then the model must have stopped:
  the pipelines stop at their next step boundary (a diffusion step, a generated token), so the rest of the time
  is kept for the upload, whose presigned URL expires at the deadline. A 40 s sd15 job stops computing at 36 s;
  a 1,200 s one at 1,170 s.
- **hard limit** = time left + a grace (10% of it, 2 s to 30 s). A model call still running then is hung (a
  native call that never reaches a step boundary): the miner reports it and abandons it
  (``workers.miner.watchdog``). The hard limit falls after the deadline on purpose: the job's message, requeued
  when the hung miner exits, has expired by then, so every miner refuses it (``workers.miner.admission``) and it
  is dead-lettered instead of being run into the same hang; the ledger has already re-sent the job, fresh
  deadline and URL, on the miner's report.

Celery enforces these only in its prefork pool; miners run the ``threads`` pool (RabbitMQ) or ``solo`` (the
embedded broker), where Celery ignores them, so the miner enforces them itself (``workers.miner.runtime``),
taking the earlier of the header's (from its start) and its own (from the deadline, which a message that
waited in a queue has less of).

RabbitMQ closes the channel of a consumer that holds a delivery unacknowledged longer than its
``consumer_timeout`` (default 1,800,000 ms = 30 min; celery/celery#6760), and the worker then exits. A miner
acknowledges a job when it ends, at the latest at its hard limit, so every deadline must stay below
``consumer_timeout`` - ``HARD_GRACE_MAX_S``: the catalog refuses a model whose deadline can exceed
``Settings.max_job_deadline_s`` (1,500 s; 1,530 s with the grace, 270 s to spare).
"""

from __future__ import annotations

from dataclasses import dataclass

UPLOAD_SHARE, UPLOAD_RESERVE_MAX_S = 0.1, 30.0
HARD_GRACE_SHARE, HARD_GRACE_MIN_S, HARD_GRACE_MAX_S = 0.1, 2.0, 30.0


@dataclass(frozen=True)
class TimeLimits:
    """Seconds from a job's start: ``soft_s`` (stop computing), ``hard_s`` (abandon a hung call)."""

    soft_s: float
    hard_s: float

    @classmethod
    def for_time_left(cls, left_s: float) -> TimeLimits:
        """The limits of a job with ``left_s`` seconds to its deadline."""
        left = max(0.0, left_s)
        reserve = min(UPLOAD_RESERVE_MAX_S, left * UPLOAD_SHARE)
        grace = min(HARD_GRACE_MAX_S, max(HARD_GRACE_MIN_S, left * HARD_GRACE_SHARE))
        return cls(soft_s=round(left - reserve, 3), hard_s=round(left + grace, 3))

    def celery_options(self) -> dict[str, float]:
        """``send_task`` keyword arguments: the message's ``timelimit`` header (hard, soft)."""
        return {"time_limit": self.hard_s, "soft_time_limit": self.soft_s}


@dataclass(frozen=True)
class JobClock:
    """When a running job must stop (``soft_at``) and when it is abandoned (``hard_at``), in unix seconds."""

    started_at: float
    soft_at: float
    hard_at: float

    @classmethod
    def start(cls, deadline_at: float, now: float, header: tuple[float | None, float | None] | None = None,
              ) -> JobClock:
        """The limits of a job starting ``now``: from its deadline, or the message's ``timelimit`` header
        (``(hard, soft)`` seconds from the start, Celery's order) where that is earlier."""
        own = TimeLimits.for_time_left(deadline_at - now)
        hard, soft = header if header is not None else (None, None)
        soft_s = min(own.soft_s, soft) if soft else own.soft_s
        hard_s = min(own.hard_s, hard) if hard else own.hard_s
        return cls(started_at=now, soft_at=now + soft_s, hard_at=now + max(hard_s, soft_s))


__all__ = ["HARD_GRACE_MAX_S", "JobClock", "TimeLimits"]
