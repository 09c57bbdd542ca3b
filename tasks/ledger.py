"""The ledger's task contracts, consumed from the trusted ``ledger`` queue and the miners' inboxes.

Each runs on ``heurist.transient.LedgerTask``: retried without limit while the database or storage is away,
kept in ``dead-letters`` when it raises anything else; nothing a miner sent is acked unprocessed and unkept.
"""

from __future__ import annotations

import json
import logging
from typing import Any, cast

from celery import Celery, Task
from pydantic import TypeAdapter, ValidationError

from heurist.access.senders import received_at, sender_of
from heurist.celery_app import HeuristCelery, services
from heurist.deadletters import Reason, first_error, keep_request
from heurist.jobs import SignedCompletion, SignedFailure, SignedHeartbeat, SignedHello
from heurist.privacy.messages import SignedRegistration
from heurist.transient import LedgerTask, sane_retries
from tasks.names import RECORD_COMPLETION, RECORD_FAILURE, RECORD_HEARTBEAT, REGISTER_MINER, REGISTER_PRIVACY

log = logging.getLogger(__name__)

# A database or storage outage is retried without limit, anything else a task raises is kept in dead-letters
# (heurist.transient); retries go to the trusted ledger queue, keeping the validated sender. Verification
# failures are verdicts, not errors.
RETRY = {"base": LedgerTask}
HELLO_WAIT_RETRIES, HELLO_WAIT_S = 5, 2.0  # a privacy registration waits up to 10 s for its miner's hello


def _parse(task: Task, model: Any, payload: Any) -> Any:
    """``payload`` as ``model``; None when malformed, after keeping the message in ``dead-letters``."""
    try:
        return model.validate_python(payload) if isinstance(model, TypeAdapter) else model.model_validate(payload)
    except ValidationError as err:
        body = json.dumps(payload, default=str).encode()
        keep_request(task, Reason.MALFORMED, first_error(err), body)
        return None


def register_ledger_tasks(app: Celery) -> None:
    """Declare the ledger tasks on an app whose services hold the ledger and its uptime book."""

    @app.task(name=RECORD_COMPLETION, bind=True, acks_late=True, **RETRY)
    def record_completion(self: Task, signed: Any) -> dict[str, Any]:
        """Verify a miner's signed completion and credit its job once."""
        ledger = services(self.app).ledger
        first = received_at(self.request, ledger.clock())  # a retry keeps the first receipt
        parsed = _parse(self, SignedCompletion, signed)
        if parsed is None:
            return {"accepted": False, "reason": "malformed"}
        verdict = ledger.record_completion(parsed, sender_of(self.request), received_at=first).report()
        return {**verdict, "miner": parsed.completion.miner, "model_id": parsed.completion.model_id}

    @app.task(name=RECORD_FAILURE, bind=True, acks_late=True, **RETRY)
    def record_failure(self: Task, signed: Any) -> None:
        """A miner's signed report that its task raised: the job ends failed if a registered miner signed it
        from its own broker user (a later valid completion is still verified)."""
        parsed = _parse(self, SignedFailure, signed)
        if parsed is not None:
            services(self.app).ledger.report_failure(parsed, sender_of(self.request))

    @app.task(name=REGISTER_MINER, bind=True, acks_late=True, **RETRY)
    def register_miner(self: Task, signed: Any) -> None:
        """Record a miner that proved it holds its key; completions from unknown keys are rejected."""
        parsed = _parse(self, SignedHello, signed)
        if parsed is not None:
            services(self.app).ledger.register_miner(parsed, sender_of(self.request))

    @app.task(name=RECORD_HEARTBEAT, bind=True, acks_late=True, **RETRY)
    def record_heartbeat(self: Task, signed: Any) -> None:
        """Count a miner's signed heartbeat towards its uptime this epoch (``heurist.ledger.uptime``)."""
        parsed = _parse(self, SignedHeartbeat, signed)
        if parsed is not None:
            services(self.app).uptime.record(parsed, sender_of(self.request))

    _register_privacy_task(app)


def _register_privacy_task(app: Celery) -> None:
    """The privacy registration task (issue 16), declared on its own to keep each function short."""

    @app.task(name=REGISTER_PRIVACY, bind=True, acks_late=True, **RETRY)
    def register_privacy(self: Task, signed: Any) -> None:
        """Record a privacy miner's signed registration (its X25519 key, the policy version it accepts) if a
        registered, unbanned miner signed it from its own broker user; refusals are logged, not stored."""
        parsed = _parse(self, SignedRegistration, signed)
        if parsed is not None:
            ledger = services(self.app).ledger  # raises unless the app was built by create_app
            settings = cast(HeuristCelery, self.app).settings
            refusal = ledger.register_privacy(parsed, sender_of(self.request),
                                              policy_version=settings.privacy_policy_version,
                                              tee_verifier=settings.privacy_tee_verifier)
            if refusal is not None and refusal.startswith("unknown miner") and \
                    sane_retries(self.request.retries) < HELLO_WAIT_RETRIES:
                # sent right after the hello, it can overtake it on a ledger with 2 workers: look again soon
                raise self.retry(countdown=HELLO_WAIT_S, throw=True)
