"""A miner's report that a job it ran raised: signed, from a registered miner in good standing, or ignored.

The report used to be Celery's ``link_error`` carrying a bare job id, so anyone who could publish into the
ledger's queue could fail anyone's job. Now it is a ``SignedFailure`` (EIP-712, ``heurist.signing``), and the
ledger checks, in order and before any write: the signature recovers to the miner the report names; that
miner sent a signed hello (registered); the report came from the broker user that key is bound to (on
RabbitMQ: the inbox's validated ``user_id``); it is not banned. Then the job ends FAILED unless it already has a
verdict (``JobBook.record_failure``), and a valid completion arriving later is still verified and credited.

What remains: any registered miner may still fail any QUEUED job, including one it never received; the
ledger does not know which miner holds a job. The report names its signer in the job's error, so such a
miner is identifiable, and the broker-identity binding (a key belongs to one broker user) makes it an
operator's act. Refused reports are logged, not stored: a flood of them must not grow the database.
"""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session, sessionmaker

from heurist.jobs import SignedFailure
from heurist.ledger.standing import read_banned
from heurist.ledger.tables import Miner, Reason
from heurist.signing import DEFAULT_DOMAIN, Domain, failure_signer

log = logging.getLogger(__name__)


def refuse_failure(sessions: sessionmaker[Session], signed: SignedFailure, sender: str | None = None,
                   domain: Domain = DEFAULT_DOMAIN) -> Reason | None:
    """Why this failure report is not believed, or None when it may be recorded. ``sender``: the broker user
    whose inbox brought it (None: the embedded broker, which has no users)."""
    claim = signed.failure
    signer = failure_signer(signed, domain)
    if signer is None or signer.lower() != claim.miner.lower():
        return Reason.BAD_SIGNATURE
    with sessions() as session:
        miner = session.get(Miner, signer)
        if miner is None:
            return Reason.UNKNOWN_SIGNER
        if sender is not None and sender != miner.broker_user:
            return Reason.WRONG_SENDER
        if read_banned(session, signer):
            return Reason.BANNED
    return None


def failure_reason(signed: SignedFailure) -> str:
    """The job's recorded error: who reported it and what they said."""
    return f"miner {signed.failure.miner} reported: {signed.failure.error or 'an error'}"


def log_refused(signed: SignedFailure, reason: Reason) -> None:
    log.warning("ignored failure report for job %s claiming miner %s: %s", signed.failure.job_id,
                signed.failure.miner, reason.value)


__all__ = ["failure_reason", "log_refused", "refuse_failure"]
