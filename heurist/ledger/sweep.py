"""No job is stranded: a job still QUEUED past its deadline is re-sent while its budget lasts, then failed.

A job can sit in the ledger as QUEUED with no message anywhere: a miner purged its tier queue (RabbitMQ's read
right, which every consumer needs, also allows ``queue.purge``, and the broker cannot separate the two), the
broker lost it, or no miner ever took it. Nothing else would ever move such a job, so its credit reservation
would be held forever. This sweep runs in every trusted ledger process, every ``sweep_interval_s``:

- a job QUEUED ``sweep_grace_s`` past its deadline is **re-sent**: a fresh deadline (now + the job's original
  duration), a fresh presigned URL, the same output key, through ``heurist.dispatch`` like the client sends
  it; at most ``job_resends`` times (counted in ``jobs.resends``, each re-send a ``job_resends`` row). A private
  job goes again with its envelope (``jobs.sealed``) to its ``private.*`` queue, never in the clear;
- once that budget is spent it is **failed** ("never completed: lost, purged or never taken; re-sent N
  times"; when miners reported it failed, their count and the last report, whose kind the client is shown:
  "…; last report: storage: upload to http://…/outputs/… failed after 9 attempts over 40.2 s (ConnectionError)",
  ``heurist.errors.public_failure``). FAILED is what refunds: the gateway's reconcile loop
  (``heurist.credits.reconcile``) gives a failed job's reservation back, once;
- a job whose output object already exists is **left waiting** ``sweep_output_wait_s`` longer (300 s by
  default): a miner uploaded it, so its completion is most likely still queued for the ledger, and a re-send
  would only make a second miner overwrite the object. The wait is bounded, because whoever read the
  presigned URL can PUT an object there to hold a job hostage. An output sent inline (``heurist.ledger.inline``)
  leaves no object: its job is re-sent, and if the inline completion arrives later it is still credited by its
  first receipt while the job is open (the second miner's is then a duplicate).

A purged job is therefore re-sent between ``deadline + grace`` and ``deadline + grace + interval`` (plus one
round's run time: milliseconds per job); tests/adversary/test_purge.py measures it.

Exactly once with several ledger processes: a re-send or a failure is a conditional UPDATE of the job row on
``state = 'queued' AND resends = <what this sweep read>``. PostgreSQL re-checks that WHERE after waiting for a
concurrent writer, SQLite has one writer at a time, so of two racing sweeps one changes the row and the other
changes nothing and sends nothing. ``(job_id, attempt)`` is also unique in ``job_resends``. The claim commits
before the message is sent: if the send then fails, the job is swept again after its new deadline.

A re-sent job may still have an older copy in a queue (a backlog, not a purge). The miner that takes that
copy refuses it as expired (``workers.miner.admission``); no miner's report ends a job anyway.

``resend_now`` spends the same budget early, when a miner reports the job failed or sends a bad result for it
(``heurist.ledger.redispatch.ResendOnReport``); it never fails a job: only a passed deadline does, here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from celery import Celery
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from heurist.catalog import ModelSpec
from heurist.db.base import ID_LEN
from heurist.db.engine import session_factory, session_scope
from heurist.dispatch import dispatch_signer, job_message, queue_for, send_job
from heurist.errors import LAST_REPORT
from heurist.jobs import JobMessage, JobState, PrivateEnvelope
from heurist.ledger.reader import PARAMS
from heurist.ledger.service import Ledger
from heurist.ledger.tables import Job, JobResend, Reason, Rejection
from heurist.periodic import Periodic, run_with_worker
from heurist.settings import Settings

log = logging.getLogger(__name__)

MIN_DURATION_S = 2.0  # a re-sent job always gets at least this long (its upload URL lives whole seconds)

# Sends one job message to a queue; the ledger's is ``heurist.dispatch.send_job`` on its Celery app.
SendJob = Callable[[JobMessage, str], None]


def never_completed(resends: int, reports: int = 0, last: str | None = None) -> str:
    """The reason a stranded job fails with, once its re-send budget is spent; ``reports``: the failure reports
    and bad results miners sent for it, ``last`` the latest one's text (a miner's report as it wrote it,
    "storage: …", or the ledger's reason for a bad result)."""
    times = f"re-sent {resends} time{'' if resends == 1 else 's'}"
    if reports:
        return f"no verified result: {reports} failure report{'' if reports == 1 else 's'} or bad result" \
               f"{'' if reports == 1 else 's'} from miners; {times}" + (f"{LAST_REPORT}{last}" if last else "")
    return f"never completed: lost, purged or never taken; {times}"


@dataclass(frozen=True)
class SweepPolicy:
    """How long a stranded job may wait and how often it is re-sent (from ``Settings``)."""

    grace_s: float = 60.0
    output_wait_s: float = 300.0
    resends: int = 2
    presign_expiry_s: int = 3600
    batch: int = 200  # jobs looked at per round, the longest overdue first

    @classmethod
    def from_settings(cls, settings: Settings) -> SweepPolicy:
        return cls(grace_s=settings.sweep_grace_s, output_wait_s=settings.sweep_output_wait_s,
                   resends=settings.job_resends, presign_expiry_s=settings.presign_expiry_s)


@dataclass(frozen=True)
class Swept:
    """What one round did: jobs re-sent, failed, and left waiting for a completion."""

    resent: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)


class Sweep:
    """One round at a time (``run_once``); thread-safe, and safe beside other processes running it."""

    def __init__(self, ledger: Ledger, send: SendJob, policy: SweepPolicy) -> None:
        self.ledger, self.send, self.policy = ledger, send, policy
        self._sessions = session_factory(ledger.engine)

    def run_once(self) -> Swept:
        """Re-send or fail every job QUEUED more than ``grace_s`` past its deadline (at most ``batch``)."""
        now = self.ledger.clock()
        done = Swept()
        for job in self._stranded(now):
            spec = self.ledger.catalog.models.get(job.model_id)
            if spec is None:
                if self._fail(job, now, f"model {job.model_id} left the catalog; the job cannot be re-sent"):
                    done.failed.append(job.id)
            elif self._output_exists(job) and now < job.deadline_at + self.policy.grace_s + self.policy.output_wait_s:
                done.waiting.append(job.id)
            elif job.resends >= self.policy.resends:
                if self._fail(job, now, never_completed(job.resends, *self._reports(job.id))):
                    done.failed.append(job.id)
            elif self._resend(job, now, spec, f"still queued {now - job.deadline_at:.1f}s past its deadline"):
                done.resent.append(job.id)
        return done

    def resend_now(self, job_id: str) -> bool:
        """Give a QUEUED job to another miner now, if its re-send budget lasts (False: not sent)."""
        with self._sessions() as session:
            job = session.get(Job, job_id)
        spec = self.ledger.catalog.models.get(job.model_id) if job is not None else None
        if job is None or spec is None or job.state is not JobState.QUEUED or job.resends >= self.policy.resends:
            return False
        return self._resend(job, self.ledger.clock(), spec, "a miner reported it failed or sent a bad result")

    def _stranded(self, now: float) -> list[Job]:
        stmt = (select(Job).where(Job.state == JobState.QUEUED, Job.deadline_at < now - self.policy.grace_s)
                .order_by(Job.deadline_at).limit(self.policy.batch))
        with self._sessions() as session:
            return list(session.scalars(stmt))

    def _reports(self, job_id: str) -> tuple[int, str | None]:
        """How many failure reports and bad results miners sent for the job, and the latest one's text."""
        about = Rejection.job_id == job_id[:ID_LEN]
        with self._sessions() as session:
            count = int(session.scalar(select(func.count()).select_from(Rejection).where(about)) or 0)
            last = session.execute(select(Rejection.reason, Rejection.detail).where(about)
                                   .order_by(Rejection.id.desc()).limit(1)).first()
        if last is None:
            return count, None
        reason, detail = last
        return count, detail if reason is Reason.FAILURE_REPORTED else f"{reason.value}: {detail}"

    def _output_exists(self, job: Job) -> bool:
        return self.ledger.store.stat(job.output_key) is not None

    def _claim(self, session: Session, job: Job, **values: Any) -> bool:
        """The exactly-once step: change the row only if no other sweep (or verdict) changed it since we read it."""
        done = session.execute(update(Job).where(Job.id == job.id, Job.state == JobState.QUEUED,
                                                 Job.resends == job.resends).values(**values))
        return int(done.rowcount) == 1  # type: ignore[attr-defined]

    def _fail(self, job: Job, now: float, reason: str) -> bool:
        with session_scope(self._sessions) as session:
            failed = self._claim(session, job, state=JobState.FAILED, error=reason, finished_at=now)
        if failed:
            log.warning("job %s failed: %s", job.id, reason)
            self.ledger.book.ended([job.id])  # its client is told (heurist.verdicts)
        return failed

    def _resend(self, job: Job, now: float, spec: ModelSpec, why: str) -> bool:
        attempt, deadline_at = job.resends + 1, now + self._duration(job)
        try:
            with session_scope(self._sessions) as session:
                if not self._claim(session, job, resends=attempt, deadline_at=deadline_at):
                    return False
                session.add(JobResend(job_id=job.id, attempt=attempt, sent_at=now,
                                      previous_deadline_at=job.deadline_at, deadline_at=deadline_at))
        except IntegrityError:
            return False  # another sweep recorded this attempt first
        # A private job goes again with its envelope, to the private queue: never in the clear.
        sealed = None if job.sealed is None else PrivateEnvelope.model_validate(job.sealed)
        message = job_message(job.id, spec.id, PARAMS.validate_python(job.params), job.output_key, deadline_at,
                              self.ledger.store, self.policy.presign_expiry_s, now=now, private=sealed)
        try:
            self.send(message, queue_for(spec, sealed))
        except Exception:  # the broker is away: the job is swept again once this new deadline passes
            log.exception("job %s: re-send %d recorded but not sent", job.id, attempt)
            return False
        log.warning("job %s re-sent (%d of %d): %s", job.id, attempt, self.policy.resends, why)
        return True

    def _duration(self, job: Job) -> float:
        """The job's original time allowance: its first deadline less its creation, kept across re-sends."""
        if job.resends == 0:
            return max(MIN_DURATION_S, job.deadline_at - job.created_at)
        with self._sessions() as session:
            last = session.scalar(select(JobResend).where(JobResend.job_id == job.id,
                                                          JobResend.attempt == job.resends))
        allowance = job.deadline_at - job.created_at if last is None else last.deadline_at - last.sent_at
        return max(MIN_DURATION_S, allowance)


def _sweep_round(sweep: Sweep) -> None:
    done = sweep.run_once()
    if done.resent or done.failed:
        log.info("stranded jobs: %d re-sent, %d failed, %d waiting for a completion",
                 len(done.resent), len(done.failed), len(done.waiting))


def install_sweep(app: Celery, settings: Settings, ledger: Ledger) -> Sweep:
    """Make the ledger worker of ``app`` sweep stranded jobs every ``sweep_interval_s`` while it runs
    (``heurist.periodic``); the ``Sweep`` is returned for ``resend_now``."""

    signer = dispatch_signer(settings)

    def send(message: JobMessage, queue: str) -> None:
        send_job(app, signer.sign(message), queue)

    sweep = Sweep(ledger, send, SweepPolicy.from_settings(settings))
    run_with_worker(app, Periodic(lambda: _sweep_round(sweep), settings.sweep_interval_s, "stranded-job sweep"))
    return sweep


__all__ = ["SendJob", "Sweep", "SweepPolicy", "Swept", "install_sweep", "never_completed"]
