"""The audit's ledger middleware: flag implausible metrics, then sample the job for a replay.

Order matters and ``audit_middleware`` keeps it: ``MetricsFlagging`` first, so a miner flagged for this
very completion's metrics is sampled at the suspicious rate by ``AuditSampling``. A sampled job goes to
its model's trusted audit queue, ``<prefix>.<model>``. The ledger package never imports this one: the
ledger consumer takes ``audit_middleware`` from whoever starts it (``heurist ledger``).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING

from celery import Celery

from heurist.audit.metrics import ReportedMetrics, check_metrics
from heurist.audit.sampler import AuditSampler
from heurist.ledger.audit_service import AuditLedger
from heurist.ledger.middleware import Accepted, LedgerMiddleware
from heurist.settings import Settings
from tasks.names import AUDIT_JOB

if TYPE_CHECKING:
    from heurist.ledger.service import Ledger

log = logging.getLogger(__name__)


def audit_queue(prefix: str, model_id: str) -> str:
    """One audit queue per model, so an auditor consumes only jobs whose model it has loaded."""
    return f"{prefix}.{model_id}"


class MetricsFlagging(LedgerMiddleware):
    """Flag a miner whose reported latency or device is implausible (``heurist.audit.metrics``): it is then
    audited at the suspicious rate, and the auditor fails the job on the same check."""

    def __init__(self, audits: AuditLedger) -> None:
        self.audits = audits

    def after_accept(self, ledger: Ledger, accepted: Accepted) -> None:
        reported = ReportedMetrics.of(accepted.claim, accepted.wall_s, accepted.registered_device)
        verdict = check_metrics(accepted.spec, accepted.params, reported)
        if verdict.plausible:
            return
        self.audits.flag(accepted.miner, f"job {accepted.job_id}: {verdict.detail}")
        accepted.standing = replace(accepted.standing, odd_metrics=True)
        log.warning("miner %s flagged: %s", accepted.miner, verdict.detail)


class AuditSampling(LedgerMiddleware):
    """Maybe send an accepted job to its audit queue, at the rate the miner's standing calls for."""

    def __init__(self, app: Celery, sampler: AuditSampler, prefix: str = "audit") -> None:
        self.app, self.sampler, self.prefix = app, sampler, prefix

    def after_accept(self, ledger: Ledger, accepted: Accepted) -> None:
        if accepted.late or not self.sampler.should_audit(accepted.job_id, accepted.standing):
            return
        self.app.send_task(AUDIT_JOB, args=[accepted.job_id], queue=audit_queue(self.prefix, accepted.spec.id))
        log.info("job %s of %s sampled for audit", accepted.job_id, accepted.miner)


def audit_middleware(app: Celery, settings: Settings, ledger: Ledger) -> list[LedgerMiddleware]:
    """What the ledger consumer runs after its verdicts for the audit, in order: flag, then sample."""
    sampler = AuditSampler(base_rate=settings.audit_base_rate, new_miner_rate=settings.audit_new_miner_rate,
                           suspicious_rate=settings.audit_suspicious_rate, seed=settings.audit_seed)
    return [MetricsFlagging(AuditLedger(ledger.engine)), AuditSampling(app, sampler, settings.audit_queue_prefix)]
