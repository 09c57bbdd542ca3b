"""The job state machine (docs/job-states.md) under any order of events, on SQLite and PostgreSQL.

Hypothesis draws sequences of what can happen to one charged job: an honest completion, its redelivery, a bad
result, a miner's failure report, the trusted side failing it (the sweep), the gateway looking at it (which
refunds a failed job or a failed audit), an audit passing or failing, and the credit sweep. After every
sequence: the job was charged once and refunded at most once; credited at most once; never credited after its
refund; and a failed audit has both clawed the credit back and refunded the client in full.
"""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from heurist.catalog import Catalog
from heurist.credits.ledger import CreditLedger
from heurist.credits.pricing import price_units
from heurist.credits.reconcile import reconcile
from heurist.credits.tables import CreditEntry, CreditEntryKind
from heurist.db.engine import session_scope
from heurist.identity import Wallet
from heurist.jobs import Failure, JobState, SignedCompletion
from heurist.ledger.audit_service import AuditLedger
from heurist.ledger.service import Ledger
from heurist.ledger.tables import AuditReason, EntryKind, PointsEntry
from heurist.signing import sign_failure
from heurist.storage.backend import ObjectStore
from tests.fixtures.ledger import Clock, Job, completion, deliver, image_job, sign

EVENTS = ("complete", "redeliver", "bad", "report", "sweep_fail", "gateway", "audit_fail", "audit_pass",
          "reconcile")


class Run:
    """One job and everything that may happen to it."""

    def __init__(self, ledger: Ledger, store: ObjectStore, catalog: Catalog, clock: Clock, miner: Wallet,
                 credits: CreditLedger, key_id: int) -> None:
        self.ledger, self.store, self.clock, self.miner, self.credits = ledger, store, clock, miner, credits
        self.catalog, self.audits = catalog, AuditLedger(ledger.engine)
        self.job: Job = image_job(ledger, catalog, clock)
        self.price = price_units(self.job.spec, self.job.params)
        credits.reserve(key_id, self.job.id, self.price)
        self.delivered: SignedCompletion | None = None
        self.audited = False

    def state(self) -> JobState:
        view = self.ledger.reader.job(self.job.id)
        assert view is not None
        return view.state

    def apply(self, event: str) -> None:
        getattr(self, f"_{event}")()

    def _complete(self) -> None:
        self.delivered, _ = deliver(self.ledger, self.store, self.job, self.miner)

    def _redeliver(self) -> None:
        if self.delivered is not None:
            self.ledger.record_completion(self.delivered)

    def _bad(self) -> None:
        self.ledger.record_completion(sign(completion(self.job, self.miner, b"not what was stored"), self.miner))

    def _report(self) -> None:
        failure = Failure(job_id=self.job.id, miner=self.miner.address, error="boom", failed_at=self.clock.now)
        self.ledger.report_failure(sign_failure(self.miner, failure))

    def _sweep_fail(self) -> None:
        self.ledger.record_failure(self.job.id, "deadline passed, re-send budget spent")

    def _gateway(self) -> None:
        """What ``GET /v1/jobs/{id}`` does for the job's owner (``heurist.gateway.jobs.job_status``)."""
        state = self.state()
        if state in (JobState.FAILED, JobState.REJECTED) or (state.has_output and
                                                                self.ledger.reader.audit_failed(self.job.id)):
            self.credits.refund(self.job.id)

    def _audit(self, passed: bool) -> None:
        if self.state().has_output and not self.audited:
            self.audits.record_audit(self.job.id, passed, None if passed else AuditReason.IMAGE_MISMATCH,
                                     "replayed", auditor="property-test")
            self.audited = True

    def _audit_fail(self) -> None:
        self._audit(False)

    def _audit_pass(self) -> None:
        self._audit(True)

    def _reconcile(self) -> None:
        self.clock.now += 31
        reconcile(self.credits, self.ledger.reader, self.catalog)


def _entries(run: Run) -> tuple[list[CreditEntry], list[PointsEntry]]:
    with session_scope(run.ledger.engine) as session:
        credit = list(session.scalars(select(CreditEntry).where(CreditEntry.job_id == run.job.id)))
        points = list(session.scalars(select(PointsEntry).where(PointsEntry.job_id == run.job.id)))
    return credit, points


def _check(run: Run) -> None:
    credit, points = _entries(run)
    charges = [e for e in credit if e.kind is CreditEntryKind.CHARGE]
    refunds = [e for e in credit if e.idempotency_key == f"refund:{run.job.id}"]
    assert len(charges) == 1 and len(refunds) <= 1  # paid for once, refunded at most once
    assert 0 <= -sum(e.amount_micro for e in credit) <= -charges[0].amount_micro  # never below zero, never above
    credits = [p for p in points if p.kind in (EntryKind.JOB_CREDIT, EntryKind.ESCROW)]
    assert len(credits) <= 1  # credited at most once
    state = run.state()
    failed_audit = run.ledger.reader.audit_failed(run.job.id)
    if state is JobState.FAILED:
        assert credits == []  # a failed (refunded) job is never credited, before or after
    if refunds:
        assert state is JobState.FAILED or failed_audit  # only those are refunded
        if credits:  # credited, then refunded: only after a failed audit, which clawed the credit back
            assert failed_audit and sum(p.amount_micro for p in points) == 0
    if failed_audit:
        assert sum(p.amount_micro for p in points) == 0


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=st.lists(st.sampled_from(EVENTS), min_size=1, max_size=8))
def test_any_order_of_events_pays_credits_and_refunds_at_most_once(ledger: Ledger, object_store: ObjectStore,
                                                                   catalog: Catalog, clock: Clock, miner: Wallet,
                                                                   events: list[str]) -> None:
    credits = CreditLedger(ledger.engine)
    key_id, _ = credits.create_key(f"app-{time.monotonic_ns()}", 1000.0)
    run = Run(ledger, object_store, catalog, clock, miner, credits, key_id)
    for event in events:
        run.apply(event)
        _check(run)
    for event in ("gateway", "reconcile"):  # whatever the gateway and the sweep still owe is closed too
        run.apply(event)
    _check(run)
    if run.state() is JobState.FAILED or run.ledger.reader.audit_failed(run.job.id):
        assert credits.charged(run.job.id) == 0.0  # refunded in full
    elif run.state().has_output:
        assert credits.charged(run.job.id) == run.price  # a good output keeps its price
    assert credits.balance(key_id) == pytest.approx(credits.entries_total(key_id))  # the balance is its entries
