"""Close the charges no request closed: jobs that ended after their request got a 504, or after the gateway
that reserved them restarted; and refund the jobs whose output failed its audit.

A request refunds a failed job and settles a text job at its verified tokens as soon as the job ends. When
nobody is waiting any more, this sweep does it instead: it finds charged jobs that ended more than
``grace_s`` ago and have no refund or settle entry, and closes them with the same idempotent calls, so a
request and the sweep racing on one job still give back once.

A failed audit protects the client too (issue 13, finding 7): before, the miner's points were clawed back but
the client kept paying for the bad output it received. Now a charged job with a failed audit is refunded what
it still holds (its charge, less a text job's settle refund) under the same once-per-job ``refund:<job>`` key a
failed job uses, so it is never refunded twice; the gateway's job status says ``audit: failed, refunded`` and no
longer serves the output. Refunding rather than re-running: the client may have used the output already, and a
re-run would charge it a second time for a job it asked once; it can resubmit, at the price it knows.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from sqlalchemy import and_, exists, literal, or_, select
from sqlalchemy.orm import aliased

from heurist.catalog import Catalog
from heurist.catalog.schema import JobKind
from heurist.credits.ledger import CreditLedger
from heurist.credits.tables import CreditEntry, CreditEntryKind
from heurist.db.engine import session_scope
from heurist.jobs import JobState
from heurist.ledger.reader import LedgerReader
from heurist.ledger.tables import Audit, AuditOutcome, Job
from heurist.points import job_points

log = logging.getLogger(__name__)

FAILED = (JobState.FAILED, JobState.REJECTED)
WITH_OUTPUT = tuple(s for s in JobState if s.has_output)


@dataclass(frozen=True)
class Reconciled:
    refunded: list[str] = field(default_factory=list)
    settled: list[str] = field(default_factory=list)
    audit_refunded: list[str] = field(default_factory=list)  # completed, then failed their audit


def open_charges(credits: CreditLedger, ended_before: float, limit: int = 500) -> list[tuple[str, JobState]]:
    """Charged jobs that ended before ``ended_before`` and still hold a charge they may not keep: failed
    ones (owed a refund) and text ones with an output (owed the unused part of the worst case)."""
    given_back = aliased(CreditEntry)
    closed = exists().where(given_back.job_id == Job.id, given_back.kind == CreditEntryKind.REFUND)
    stmt = (select(Job.id, Job.state)
            .join(CreditEntry, and_(CreditEntry.job_id == Job.id, CreditEntry.kind == CreditEntryKind.CHARGE))
            .where(Job.finished_at < ended_before, ~closed,
                   or_(Job.state.in_(FAILED), and_(Job.kind == JobKind.TEXT, Job.state.in_(WITH_OUTPUT))))
            .order_by(Job.finished_at).limit(limit))
    with session_scope(credits.engine) as session:
        return [(job_id, state) for job_id, state in session.execute(stmt).tuples()]


def failed_audits(credits: CreditLedger, limit: int = 500) -> list[str]:
    """Charged jobs an auditor failed that have not had their refund yet."""
    refunded = aliased(CreditEntry)
    stmt = (select(Job.id)
            .join(CreditEntry, and_(CreditEntry.job_id == Job.id, CreditEntry.kind == CreditEntryKind.CHARGE))
            .where(exists().where(Audit.job_id == Job.id, Audit.outcome == AuditOutcome.FAILED),
                   ~exists().where(refunded.idempotency_key == literal("refund:").concat(Job.id)))
            .order_by(Job.finished_at).limit(limit))
    with session_scope(credits.engine) as session:
        return list(session.scalars(stmt))


def reconcile(credits: CreditLedger, ledger: LedgerReader, catalog: Catalog, grace_s: float = 30.0) -> Reconciled:
    """Refund failed jobs and failed audits, and settle finished text jobs that no request closed; idempotent."""
    done = Reconciled()
    for job_id in failed_audits(credits):  # first: a settle below must not be the last word on a bad output
        credits.refund(job_id)
        done.audit_refunded.append(job_id)
    for job_id, state in open_charges(credits, ledger.clock() - grace_s):
        if state in FAILED:
            credits.refund(job_id)
            done.refunded.append(job_id)
            continue
        view, params = ledger.job(job_id), ledger.job_params(job_id)
        if view is None or params is None or view.model_id not in catalog:
            continue  # the job's model left the catalog: an operator decides, not the sweep
        actual = job_points(catalog[view.model_id], params, view.input_tokens or 0, view.output_tokens or 0)
        credits.settle(job_id, actual)
        done.settled.append(job_id)
    return done


class Reconciler:
    """Runs ``reconcile`` every ``interval_s`` on a daemon thread, for as long as the gateway serves."""

    def __init__(self, credits: CreditLedger, ledger: LedgerReader, catalog: Catalog, interval_s: float) -> None:
        self.credits, self.ledger, self.catalog, self.interval_s = credits, ledger, catalog, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heurist-reconcile", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                done = reconcile(self.credits, self.ledger, self.catalog)
            except Exception:  # a database hiccup: the next round retries, the gateway keeps serving
                log.exception("credit reconciliation failed; retrying in %gs", self.interval_s)
                continue
            if done.refunded or done.settled or done.audit_refunded:
                log.info("reconciled credits: %d refunded, %d settled, %d refunded after a failed audit",
                         len(done.refunded), len(done.settled), len(done.audit_refunded))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

