"""The audit's ledger middleware: flag implausible metrics, then sample the job for a replay.

Both decide inside the credit's transaction (``within_accept``), so a ledger that dies right after a credit
loses neither the flag nor the sample. The sample used to be drawn in a hook after the commit: a run that
SIGKILLed the ledger 6 times while it drained 60 jobs lost 3 of 55 samples. Now a sampled job is an outbox row
(``heurist.outbox``), committed with the credit and published by the ledger's relay (at once, or by its drain
after a crash) to the model's trusted audit queue, ``<prefix>.<model>``.

Order matters and ``audit_middleware`` keeps it: ``MetricsFlagging`` first, so a miner flagged for this very
completion's metrics is sampled at the suspicious rate by ``AuditSampling``. The ledger package never imports
this one: the ledger consumer takes ``audit_middleware`` from whoever starts it (``heurist ledger``).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING

from celery import Celery
from sqlalchemy.orm import Session

from heurist.audit.metrics import ReportedMetrics, check_metrics
from heurist.audit.sampler import AuditSampler
from heurist.ledger.middleware import Accepted, LedgerMiddleware
from heurist.ledger.tables import MinerEvent, MinerEventKind
from heurist.outbox import put
from heurist.settings import Settings
from tasks.names import AUDIT_JOB

if TYPE_CHECKING:
    from heurist.ledger.service import Ledger

log = logging.getLogger(__name__)


def audit_queue(prefix: str, model_id: str) -> str:
    """One audit queue per model, so an auditor consumes only jobs whose model it has loaded."""
    return f"{prefix}.{model_id}"


def audit_key(job_id: str) -> str:
    """The outbox key of a job's audit sample: one per job, however often its credit is retried."""
    return f"audit:{job_id}"


class MetricsFlagging(LedgerMiddleware):
    """Flag a miner whose reported latency or device is implausible (``heurist.audit.metrics``): it is then
    audited at the suspicious rate, and the auditor fails the job on the same check."""

    def within_accept(self, session: Session, accepted: Accepted) -> None:
        reported = ReportedMetrics.of(accepted.claim, accepted.wall_s, accepted.registered_device)
        verdict = check_metrics(accepted.spec, accepted.params, reported)
        if verdict.plausible:
            return
        session.add(MinerEvent(miner_address=accepted.miner, kind=MinerEventKind.FLAGGED,
                               detail=f"job {accepted.job_id}: {verdict.detail}", created_at=accepted.at))
        accepted.standing = replace(accepted.standing, odd_metrics=True)
        log.warning("miner %s flagged: %s", accepted.miner, verdict.detail)


class AuditSampling(LedgerMiddleware):
    """Maybe decide an audit of an accepted job, at the rate the miner's standing calls for: an outbox row
    committed with the credit, for the model's audit queue."""

    def __init__(self, sampler: AuditSampler, prefix: str = "audit") -> None:
        self.sampler, self.prefix = sampler, prefix

    def within_accept(self, session: Session, accepted: Accepted) -> None:
        if accepted.late or not self.sampler.should_audit(accepted.job_id, accepted.standing):
            return
        key = audit_key(accepted.job_id)
        put(session, key, AUDIT_JOB, audit_queue(self.prefix, accepted.spec.id), [accepted.job_id], accepted.at)
        accepted.outbox_keys.append(key)

    def after_accept(self, ledger: Ledger, accepted: Accepted) -> None:
        if audit_key(accepted.job_id) in accepted.outbox_keys:
            log.info("job %s of %s sampled for audit", accepted.job_id, accepted.miner)


def audit_middleware(app: Celery, settings: Settings, ledger: Ledger) -> list[LedgerMiddleware]:
    """What the ledger consumer runs with its verdicts for the audit, in order: flag, then sample."""
    sampler = AuditSampler(base_rate=settings.audit_base_rate, new_miner_rate=settings.audit_new_miner_rate,
                           suspicious_rate=settings.audit_suspicious_rate, seed=settings.audit_seed)
    return [MetricsFlagging(), AuditSampling(sampler, settings.audit_queue_prefix)]
