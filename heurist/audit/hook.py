"""Audit sampling as a Celery signal on the ledger: every accepted completion is a candidate.

Hooked to ``task_success`` of the ledger's record-completion task, so crediting stays one job and sampling
another; the task body has no ``if`` for it. A sampled job goes to the trusted ``audit`` queue.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, Task
from celery.signals import task_success

from heurist.audit.sampler import AuditSampler
from heurist.ledger.audit_service import AuditLedger
from tasks.names import AUDIT_JOB, RECORD_COMPLETION

log = logging.getLogger(__name__)


def audit_queue(prefix: str, model_id: str) -> str:
    """One audit queue per model, so an auditor consumes only jobs whose model it has loaded."""
    return f"{prefix}.{model_id}"


def install_audit_sampling(app: Celery, sampler: AuditSampler, audits: AuditLedger, prefix: str = "audit") -> None:
    """After each first acceptance of a completion on ``app``, maybe send the job to its audit queue."""

    def on_success(sender: Task | None = None, result: Any = None, **_: Any) -> None:
        if sender is None or sender.name != RECORD_COMPLETION or sender.app is not app:
            return
        if not isinstance(result, dict) or not result.get("accepted") or result.get("duplicate"):
            return
        job_id, miner = result["job_id"], result["miner"]
        if sampler.should_audit(job_id, audits.standing(miner)):
            app.send_task(AUDIT_JOB, args=[job_id], queue=audit_queue(prefix, result["model_id"]))
            log.info("job %s of %s sampled for audit", job_id, miner)

    task_success.connect(on_success, weak=False)
