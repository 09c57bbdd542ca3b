"""Audit hooks on the ledger, as Celery signals: every first acceptance of a completion is a candidate.

Hooked to ``task_success`` of the ledger's record-completion task, so crediting stays one job and each
audit concern another; the task body has no ``if`` for them. Receivers run in the order they were
connected: ``install_metrics_flagging`` first, so a miner flagged for this very completion's metrics is
sampled at the suspicious rate by ``install_audit_sampling``. A sampled job goes to a trusted audit queue.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery

from heurist.audit.metrics import MetricsVerdict, check_metrics
from heurist.audit.sampler import AuditSampler
from heurist.catalog import Catalog
from heurist.ledger.audit_service import AuditLedger
from heurist.ledger.claims import read_claim
from heurist.ledger.signals import first_acceptance, on_verdict
from tasks.names import AUDIT_JOB

log = logging.getLogger(__name__)


def audit_queue(prefix: str, model_id: str) -> str:
    """One audit queue per model, so an auditor consumes only jobs whose model it has loaded."""
    return f"{prefix}.{model_id}"


def flag_odd_metrics(catalog: Catalog, audits: AuditLedger, job_id: str) -> MetricsVerdict | None:
    """Flag the miner of ``job_id`` if its reported latency or device is implausible; None: no claim."""
    claim = read_claim(audits.engine, job_id)
    spec = catalog.models.get(claim.model_id) if claim is not None else None
    if claim is None or spec is None:
        return None
    verdict = check_metrics(spec, claim.params, claim.reported())
    if not verdict.plausible:
        audits.flag(claim.miner, f"job {claim.job_id}: {verdict.detail}")
        log.warning("miner %s flagged: %s", claim.miner, verdict.detail)
    return verdict


def install_metrics_flagging(app: Celery, catalog: Catalog, audits: AuditLedger) -> None:
    """Flag miners with implausible metrics (``heurist.audit.metrics``) as their completions are accepted:
    the sampler then audits them at the suspicious rate, and the auditor fails the job on the same check."""
    on_verdict(app, lambda verdict: flag_odd_metrics(catalog, audits, verdict["job_id"]), first_acceptance)


def install_audit_sampling(app: Celery, sampler: AuditSampler, audits: AuditLedger, prefix: str = "audit") -> None:
    """After each first acceptance of a completion on ``app``, maybe send the job to its audit queue."""

    def maybe_audit(result: dict[str, Any]) -> None:
        job_id, miner = result["job_id"], result["miner"]
        if sampler.should_audit(job_id, audits.standing(miner)):
            app.send_task(AUDIT_JOB, args=[job_id], queue=audit_queue(prefix, result["model_id"]))
            log.info("job %s of %s sampled for audit", job_id, miner)

    on_verdict(app, maybe_audit, first_acceptance)
