"""The trusted auditor: replay a sampled job on hardware we trust and record the verdict in the ledger.

Images are re-rendered with the recorded seed, size and steps and compared perceptually
(``workers.audit.image_check``); text is teacher-forced through the model once (``workers.audit.text_check``).
The verdict and its consequences (clawback, escrow, ban) are ledger entries (``AuditLedger``).
"""

from __future__ import annotations

import hashlib
import logging
import math
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from rich.console import Console

from heurist.access import broker_access
from heurist.audit.metrics import ReportedMetrics, check_metrics
from heurist.audit.middleware import audit_queue
from heurist.catalog import Catalog, JobKind
from heurist.celery_app import create_app, only_tasks, run_worker, worker_pool
from heurist.deadletters.consumer import keep_poison
from heurist.errors import HeuristError
from heurist.identity import Wallet
from heurist.jobs import ImageParams, TextOutput, TextParams
from heurist.ledger.audit_service import AuditLedger, AuditResult
from heurist.ledger.claims import AcceptedClaim, read_claim
from heurist.ledger.factory import open_ledger
from heurist.ledger.service import Ledger
from heurist.ledger.tables import AuditReason
from heurist.ledger.token_counts import claim_mismatch
from heurist.privacy.envelope import DecryptionError, decrypt_output
from heurist.reconnect import node_name
from heurist.services import Services
from heurist.settings import Settings
from heurist.storage import make_store
from tasks.audit import register_audit_tasks
from tasks.names import AUDIT_TASKS
from workers.audit.private import NotAuditable, PrivateAudits, first_error
from workers.miner.device import detect_device
from workers.miner.launch import load_pipelines, plan_miner
from workers.miner.pipelines.backend import Pipeline

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Finding:
    """One check's outcome, before it becomes a ledger entry."""

    passed: bool
    reason: AuditReason | None
    detail: str
    metrics: dict[str, Any]


def check_image(pipeline: Pipeline, params: ImageParams | TextParams, claimed: bytes) -> Finding:
    """Decoded first: bytes that are not an image used to raise out of the audit, which then recorded nothing
    and clawed nothing back (issue 13, finding 3). They fail it now, before the replay is paid for."""
    from workers.audit.image_check import compare_images, undecodable

    problem = undecodable(claimed)
    if problem is not None:
        return Finding(False, AuditReason.OUTPUT_UNDECODABLE, problem, {})
    reference = pipeline.run(params, math.inf).data
    verdict = compare_images(reference, claimed)
    metrics = {"phash_distance": verdict.phash_distance, "similarity": verdict.similarity}
    reason = None if verdict.passed else AuditReason.IMAGE_MISMATCH
    return Finding(verdict.passed, reason, verdict.reason or "", metrics)


def check_text_output(pipeline: Pipeline, params: ImageParams | TextParams, claimed: bytes) -> Finding:
    from workers.audit.text_check import check_text
    from workers.miner.pipelines.backends.causal_lm import CausalLMPipeline

    if not isinstance(pipeline, CausalLMPipeline) or not isinstance(params, TextParams):
        raise HeuristError(f"text audit needs a causal LM and text params, got {type(pipeline).__name__}")
    try:
        output = TextOutput.model_validate_json(claimed)
    except ValidationError as err:  # never str(err): it quotes the input, a private job's decrypted answer
        return Finding(False, AuditReason.OUTPUT_UNDECODABLE, f"output is not a TextOutput ({first_error(err)})",
                       {})
    verdict = check_text(pipeline, params, output)
    metrics = {"mean_logprob": verdict.mean_logprob, "worst_rank": verdict.worst_rank,
               "fraction_top1": verdict.fraction_top1, "tokens_checked": verdict.tokens_checked}
    reason = None if verdict.passed else AuditReason.TEXT_MISMATCH
    return Finding(verdict.passed, reason, verdict.reason or "", metrics)


CHECKS: dict[JobKind, Callable[[Pipeline, ImageParams | TextParams, bytes], Finding]] = {
    JobKind.IMAGE: check_image,
    JobKind.TEXT: check_text_output,
}


def _report(result: AuditResult) -> dict[str, Any]:
    """What the audit task returns (and logs) for one verdict."""
    return {"job_id": result.job_id, "miner": result.miner, "passed": result.passed, "reason": result.reason,
            "clawback": result.clawback_micro, "banned": result.banned, "duplicate": result.duplicate}


@dataclass
class Auditor:
    """Replays jobs of the models it has loaded; one verdict per (job, auditor)."""

    ledger: Ledger
    audits: AuditLedger
    pipelines: Mapping[str, Pipeline]
    name: str = f"auditor@{socket.gethostname()}"  # in its verdicts: stable across restarts (the node name is not)
    on_ban: Sequence[Callable[[str], None]] = ()  # called with the miner's address when an audit bans it
    private: PrivateAudits | None = None  # with a key (--key-file): private jobs whose ACC admits this auditor

    def audit(self, job_id: str) -> dict[str, Any]:
        earlier = self.audits.recorded(job_id, self.name)
        if earlier is not None:  # judged already: no second replay, no second penalty
            log.warning("job %s was audited already by %s: not replayed", job_id, self.name)
            return _report(earlier)
        view = self.ledger.reader.job(job_id)
        claim = read_claim(self.ledger.engine, job_id)
        if view is None or claim is None or view.output_sha256 is None:
            raise HeuristError(f"job {job_id} has no accepted completion to audit")
        try:
            finding = self._check(self.pipelines[claim.model_id], claim, view.stored_key, view.output_sha256)
        except NotAuditable as err:  # a private job this auditor may not read: no verdict, nothing recorded
            log.warning("not audited: %s", err)
            return {"job_id": job_id, "miner": claim.miner, "skipped": str(err)}
        result = self.audits.record_audit(job_id, finding.passed, finding.reason, finding.detail, finding.metrics,
                                          auditor=self.name)
        if result.banned and not result.duplicate:
            self._banned(result.miner)
        if result.passed and result.standing.odd_metrics:
            self.audits.unflag(result.miner, f"job {job_id} passed its audit, metrics included")
        return _report(result)

    def _banned(self, miner: str) -> None:
        """Run the ban hooks; the ban itself is already a ledger entry, so a hook's failure is only logged
        (with the command that finishes the job by hand)."""
        for hook in self.on_ban:
            try:
                hook(miner)
            except HeuristError as err:
                log.error("miner %s is banned, but a ban hook failed: %s; retry with `heurist broker revoke %s`",
                          miner, err, miner)

    def _check(self, pipeline: Pipeline, claim: AcceptedClaim, key: str, sha256: str) -> Finding:
        """Cheapest first: the stored bytes, the weight attestation, the reported metrics, then the replay.

        ``key`` is the frozen copy of the credited bytes (``heurist.storage.freeze``): an overwrite through
        the job's URL after the credit cannot make an honest miner fail here. The sha256 check remains for
        completions accepted before outputs were frozen."""
        claimed = self.ledger.store.get(key)
        if hashlib.sha256(claimed).hexdigest() != sha256:
            return Finding(False, AuditReason.OUTPUT_MISSING, "the stored output changed after it was credited", {})
        sealed = self.ledger.reader.job_envelope(claim.job_id)
        if sealed is not None:
            if self.private is None:
                raise NotAuditable(f"job {claim.job_id} is private and this auditor has no key (--key-file)")
            claim, job_key = self.private.open(claim, sealed)
            try:
                claimed = decrypt_output(job_key, claim.job_id, claimed)
            except DecryptionError as err:
                return Finding(False, AuditReason.OUTPUT_UNDECODABLE, str(err), {})
        if claim.weights_sha256 is not None and claim.weights_sha256 != pipeline.weights_sha256:
            return Finding(False, AuditReason.WEIGHTS_TAMPERED, f"attests weights {claim.weights_sha256[:12]}…; "
                           f"the auditor's verified files hash to {pipeline.weights_sha256[:12]}…", {})
        if isinstance(claim.params, TextParams):  # the ledger checks this since issue 13; older credits too
            problem = claim_mismatch(claimed, claim.params, (claim.input_tokens, claim.output_tokens),
                                     self.ledger.tokenizers(pipeline.spec) if self.ledger.tokenizers else None)
            if problem is not None:
                return Finding(False, AuditReason.TOKEN_MISMATCH, problem, {})
        reported = ReportedMetrics.of(claim, claim.wall_s, claim.registered_device)
        metrics = check_metrics(pipeline.spec, claim.params, reported)
        if not metrics.plausible:
            return Finding(False, AuditReason.METRICS_IMPLAUSIBLE, metrics.detail, metrics.metrics)
        return CHECKS[pipeline.spec.kind](pipeline, claim.params, claimed)


def run_auditor(settings: Settings, catalog: Catalog, model_ids: list[str], loglevel: str = "INFO",
                key_file: Path | None = None) -> None:
    """Load the models to audit (verified like a miner's), then consume their audit queues. ``key_file``: the
    auditor's own key, for private jobs whose ACC admits it (``workers.audit.private``)."""
    console = Console(stderr=True)
    store = make_store(settings)  # missing S3 keys fail here, before minutes of model loading
    plan = plan_miner(catalog, model_ids, None, detect_device(None, settings.torch_threads))
    pipelines = load_pipelines(plan, settings.resolved_models_dir(), console)
    ledger = open_ledger(settings, catalog, store)
    access = broker_access(settings)
    private = PrivateAudits.start(settings, Wallet.from_file(key_file), ledger.engine) if key_file else None
    auditor = Auditor(ledger=ledger, audits=AuditLedger(ledger.engine), pipelines=pipelines,  # a ban revokes the
                      on_ban=[lambda miner: access.revoke(ledger.reader.operator_of(miner))],  # operator's user
                      private=private)
    app = create_app(settings, Services("auditor", auditor=auditor))
    register_audit_tasks(app)
    only_tasks(app, AUDIT_TASKS)
    keep_poison(app, settings)
    queues = [audit_queue(settings.audit_queue_prefix, model_id) for model_id in pipelines]
    console.print(f"auditor consuming {', '.join(queues)}")
    pool, concurrency = worker_pool(settings.resolved_broker_url(), 1)
    worker = app.Worker(hostname=node_name("auditor"), queues=queues, pool=pool, concurrency=concurrency,
                        prefetch_multiplier=1, loglevel=loglevel, quiet=True)
    run_worker(worker, "auditor")
