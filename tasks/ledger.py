"""The ledger's task contracts, consumed from the trusted ``ledger`` queue only."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, Task
from pydantic import ValidationError
from sqlalchemy.exc import OperationalError

from heurist.celery_app import services
from heurist.errors import StorageError
from heurist.jobs import SignedCompletion, SignedFailure, SignedHeartbeat, SignedHello
from tasks.names import RECORD_COMPLETION, RECORD_FAILURE, RECORD_HEARTBEAT, REGISTER_MINER

log = logging.getLogger(__name__)

# Database or storage hiccups are retried by Celery itself; verification failures are verdicts, not errors.
TRANSIENT = (OperationalError, StorageError)
RETRY = {"autoretry_for": TRANSIENT, "retry_backoff": True, "retry_backoff_max": 30, "max_retries": 20}


def _parse(model: type[SignedCompletion] | type[SignedFailure] | type[SignedHello] | type[SignedHeartbeat],
           payload: Any) -> Any:
    try:
        return model.model_validate(payload)
    except ValidationError as err:
        log.warning("rejected malformed %s: %s", model.__name__, err.errors()[0])
        return None


def register_ledger_tasks(app: Celery) -> None:
    """Declare the ledger tasks on an app whose services hold the ledger and its uptime book."""

    @app.task(name=RECORD_COMPLETION, bind=True, acks_late=True, **RETRY)
    def record_completion(self: Task, signed: Any) -> dict[str, Any]:
        """Verify a miner's signed completion and credit its job once."""
        parsed = _parse(SignedCompletion, signed)
        if parsed is None:
            return {"accepted": False, "reason": "malformed"}
        verdict = services(self.app).ledger.record_completion(parsed).report()
        return {**verdict, "miner": parsed.completion.miner, "model_id": parsed.completion.model_id}

    @app.task(name=RECORD_FAILURE, bind=True, acks_late=True, **RETRY)
    def record_failure(self: Task, signed: Any) -> None:
        """A miner's signed report that its task raised: the job ends failed if a registered miner signed it
        (a later valid completion is still verified)."""
        parsed = _parse(SignedFailure, signed)
        if parsed is not None:
            services(self.app).ledger.report_failure(parsed)

    @app.task(name=REGISTER_MINER, bind=True, acks_late=True, **RETRY)
    def register_miner(self: Task, signed: Any) -> None:
        """Record a miner that proved it holds its key; completions from unknown keys are rejected."""
        parsed = _parse(SignedHello, signed)
        if parsed is not None:
            services(self.app).ledger.register_miner(parsed)

    @app.task(name=RECORD_HEARTBEAT, bind=True, acks_late=True, **RETRY)
    def record_heartbeat(self: Task, signed: Any) -> None:
        """Count a miner's signed heartbeat towards its uptime this epoch (``heurist.ledger.uptime``)."""
        parsed = _parse(SignedHeartbeat, signed)
        if parsed is not None:
            services(self.app).uptime.record(parsed)
