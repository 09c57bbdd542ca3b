"""A miner's report that a job it ran raised: signed, from a registered miner in good standing, or ignored.

The report used to be Celery's ``link_error`` carrying a bare job id, so anyone who could publish into the
ledger's queue could fail anyone's job. Then it became a ``SignedFailure`` (EIP-712, ``heurist.signing``),
checked in order before any write: the signature recovers to the miner the report names; that miner sent a
signed hello (registered); the report came from the broker user that key is bound to (on RabbitMQ: the inbox's
validated ``user_id``); it is not banned.

Even so, any registered miner could still end any job early (issue 13, finding 2): on a shared tier queue every
miner can read every job (``basic_get`` and requeue), so the ledger cannot tell which miner holds one, and a
"holder" would be whoever claimed first. So a report no longer ends the job at all. It is recorded against its
signer (a ``failure_reported`` row: who said what, for operators and standing), only for a job still QUEUED,
and the ledger consumer gives the job to another miner at once while its re-send budget lasts
(``heurist.ledger.redispatch.ResendOnReport``). An honest failure thus gets a second miner within seconds; a
false one costs the network one extra run per budgeted re-send and ends nothing: only the trusted side ends a
job (docs/job-states.md). Refused reports are logged, not stored: a flood of them must not grow the database.
"""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from heurist.db.base import ID_LEN
from heurist.db.engine import session_scope
from heurist.jobs import JobState, SignedFailure
from heurist.ledger.standing import read_banned
from heurist.ledger.tables import Job, Miner, Reason, Rejection
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


def record_report(sessions: sessionmaker[Session], signed: SignedFailure, now: float) -> bool:
    """Keep a believed report against its signer; False (nothing kept) when the job is unknown or not open."""
    claim = signed.failure
    with session_scope(sessions) as session:
        if session.scalar(select(Job.state).where(Job.id == claim.job_id)) is not JobState.QUEUED:
            return False
        session.add(Rejection(job_id=claim.job_id[:ID_LEN], miner_address=claim.miner,
                              reason=Reason.FAILURE_REPORTED, detail=claim.error or "an error", received_at=now))
    return True


def log_refused(signed: SignedFailure, reason: Reason) -> None:
    log.warning("ignored failure report for job %s claiming miner %s: %s", signed.failure.job_id,
                signed.failure.miner, reason.value)


__all__ = ["log_refused", "record_report", "refuse_failure"]
