"""Audit verdicts and their penalties, as append-only ledger rows (never edits).

A failed audit appends: the audit row, a clawback of the job's credit (once per job, whoever audits it,
however often), a ``sampling_raised`` event when the miner was in good standing, and a ``banned`` event
when its failed audits reach the threshold. A passed audit may release a new miner's escrow: once it has
``new_miner_audits`` passed audits and no failed one, its whole held balance moves to the available one
(one zero-sum pair of entries, once per miner). Idempotency rests on unique keys, as in the credit path:
``audits (job_id, auditor)`` and ``points_entries.idempotency_key``; a writer that loses a race retries
once and then finds the winner's rows. What no key can say (the failures reaching the ban threshold, a release
with no failed audit) is decided with the miner's row locked (``heurist.ledger.locks``): audits of one miner's
jobs judged at once, by auditors of several models, are recorded one after the other.

Reputation (``AuditLedger.reputation``) is a Laplace-smoothed, exponentially decayed pass rate over the
miner's newest ``REPUTATION_WINDOW`` audits, newest first (i = 0, 1, ...)::

    reputation = (1 + sum(DECAY**i * passed_i)) / (2 + sum(DECAY**i))      (0.0 once banned)

A miner with no audits has 0.5; each pass pulls it towards 1 and each failure towards 0, recent audits
weighing most (DECAY = 0.9: an audit 7 audits back counts half as much as the newest).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import Engine, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from heurist.db.engine import session_factory, session_scope
from heurist.errors import InvalidJobError
from heurist.ledger.locks import lock_miner
from heurist.ledger.standing import NEW_MINER_AUDITS, MinerStanding, read_banned, read_standing, release_key
from heurist.ledger.tables import (
    CLAWBACK_KINDS,
    CREDITED_KINDS,
    ESCROWED_KINDS,
    Audit,
    AuditOutcome,
    AuditReason,
    CompletionRow,
    EntryKind,
    MinerEvent,
    MinerEventKind,
    PointsEntry,
)

log = logging.getLogger(__name__)

EPOCH_SECONDS = 86400  # v_points_per_miner_epoch: epoch = floor(created_at / EPOCH_SECONDS) (frozen in 0002)
BAN_THRESHOLD = 3  # failed audits that ban a miner
REPUTATION_DECAY = 0.9
REPUTATION_WINDOW = 50  # older audits weigh < 0.9**50 ≈ 0.005: ignored
CREDIT_KINDS = (EntryKind.JOB_CREDIT, EntryKind.ESCROW)  # what a job earned when it was verified


# ------------------------------------------------------------------------------------------------- reads


def _sum_kinds(session: Session, miner: str, kinds: tuple[EntryKind, ...]) -> int:
    total = session.scalar(select(func.sum(PointsEntry.amount_micro))
                           .where(PointsEntry.miner_address == miner, PointsEntry.kind.in_(kinds)))
    return int(total or 0)  # SUM over BIGINT is a Decimal on PostgreSQL


def _has_key(session: Session, key: str) -> bool:
    return session.scalar(select(PointsEntry.id).where(PointsEntry.idempotency_key == key)) is not None


# ------------------------------------------------------------------------------------------------ results


@dataclass(frozen=True)
class AuditResult:
    """What recording one audit did. ``duplicate``: this auditor had already judged the job; nothing new
    was written and the amounts are those of the first recording."""

    job_id: str
    miner: str
    passed: bool
    duplicate: bool
    clawback_micro: int  # <= 0: what the failed audit took back (0 for a pass)
    released_micro: int  # >= 0: escrow this audit released
    banned: bool  # the miner is banned after this audit
    standing: MinerStanding
    reason: AuditReason | None = None  # why it failed (None for a pass)


@dataclass(frozen=True)
class MinerBalance:
    """A miner's points by balance (micro-points): total = credited + escrowed."""

    miner: str
    credited_micro: int  # available: job_credit + escrow_release + clawback
    escrowed_micro: int  # held: escrow + escrow_debit + escrow_clawback
    clawed_back_micro: int  # <= 0, both buckets

    @property
    def total_micro(self) -> int:
        return self.credited_micro + self.escrowed_micro


# ------------------------------------------------------------------------------------------------ service


class AuditLedger:
    """Records audit verdicts and applies their penalties; reads standing, reputation and bans."""

    def __init__(self, engine: Engine, *, new_miner_audits: int = NEW_MINER_AUDITS,
                 ban_threshold: int = BAN_THRESHOLD, clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self.new_miner_audits = new_miner_audits
        self.ban_threshold = ban_threshold
        self.clock = clock
        self._sessions = session_factory(engine)

    # ----------------------------------------------------------------------------------------- reads

    def standing(self, miner: str) -> MinerStanding:
        """The miner's audit record (what the sampler's rate follows)."""
        with self._sessions() as session:
            return read_standing(session, miner)

    def is_banned(self, miner: str) -> bool:
        """Whether the ledger refuses this miner's hellos and completions."""
        with self._sessions() as session:
            return read_banned(session, miner)

    def reputation(self, miner: str) -> float:
        """Decayed, Laplace-smoothed pass rate in [0, 1] (module docstring); 0.0 when banned."""
        with self._sessions() as session:
            if read_banned(session, miner):
                return 0.0
            outcomes = session.scalars(select(Audit.outcome).where(Audit.miner_address == miner)
                                       .order_by(Audit.audited_at.desc(), Audit.id.desc())
                                       .limit(REPUTATION_WINDOW)).all()
        weights = [REPUTATION_DECAY**i for i in range(len(outcomes))]
        passed = sum(w for w, o in zip(weights, outcomes, strict=True) if o is AuditOutcome.PASSED)
        return (1.0 + passed) / (2.0 + sum(weights))

    def balance(self, miner: str) -> MinerBalance:
        """The miner's available and held points, and what clawbacks took."""
        with self._sessions() as session:
            return MinerBalance(miner=miner, credited_micro=_sum_kinds(session, miner, CREDITED_KINDS),
                                escrowed_micro=_sum_kinds(session, miner, ESCROWED_KINDS),
                                clawed_back_micro=_sum_kinds(session, miner, CLAWBACK_KINDS))

    def recorded(self, job_id: str, auditor: str) -> AuditResult | None:
        """This auditor's verdict on the job if it gave one already: read before a replay, so a job sent to
        the audit queue again (a redelivery, or a forged or repeated message) costs no second replay."""
        with self._sessions() as session:
            audit = session.scalar(select(Audit).where(Audit.job_id == job_id, Audit.auditor == auditor))
            return None if audit is None else self._duplicate(session, audit)

    # ---------------------------------------------------------------------------------------- writes

    def record_audit(self, job_id: str, passed: bool, reason: AuditReason | str | None = None,
                     detail: str = "", metrics: dict[str, Any] | None = None,
                     auditor: str = "auditor") -> AuditResult:
        """Append an auditor's verdict on a completed job and its consequences, in one transaction.
        Re-recording the same verdict (same job, same auditor) changes nothing."""
        if not passed and reason is None:
            raise ValueError("a failed audit needs a reason")
        verdict = AuditReason(reason) if reason is not None else None
        for attempt in range(2):
            try:
                return self._record(job_id, passed, verdict, detail, metrics or {}, auditor)
            except IntegrityError:
                if attempt:  # a concurrent writer won twice: not a race any more
                    raise
                log.info("audit of job %s raced another writer: reading its rows", job_id)
        raise AssertionError("unreachable")

    def _record(self, job_id: str, passed: bool, reason: AuditReason | None, detail: str,
                metrics: dict[str, Any], auditor: str) -> AuditResult:
        with session_scope(self._sessions) as session:
            miner = session.scalar(select(CompletionRow.miner_address).where(CompletionRow.job_id == job_id))
            if miner is None:
                raise InvalidJobError(f"job {job_id} has no accepted completion to audit")
            lock_miner(session, miner)  # its audits one at a time: each counts the ones before (heurist.ledger.locks)
            existing = session.scalar(select(Audit).where(Audit.job_id == job_id, Audit.auditor == auditor))
            if existing is not None:
                return self._duplicate(session, existing)
            before = read_standing(session, miner)
            now = self.clock()
            session.add(Audit(job_id=job_id, miner_address=miner,
                              outcome=AuditOutcome.PASSED if passed else AuditOutcome.FAILED, reason=reason,
                              detail=detail, metrics=metrics, audited_at=now, auditor=auditor))
            session.flush()  # the (job_id, auditor) key refuses a concurrent twin here
            if passed:
                return self._after_pass(session, job_id, miner, now)
            return replace(self._after_failure(session, job_id, miner, before, now), reason=reason)

    def _duplicate(self, session: Session, audit: Audit) -> AuditResult:
        miner, job_id = audit.miner_address, audit.job_id
        clawed = session.scalar(select(PointsEntry.amount_micro)
                                .where(PointsEntry.idempotency_key == f"clawback:{job_id}"))
        passed = audit.outcome is AuditOutcome.PASSED
        return AuditResult(job_id=job_id, miner=miner, passed=passed, duplicate=True,
                           clawback_micro=0 if passed else int(clawed or 0), released_micro=0,
                           banned=read_banned(session, miner), standing=read_standing(session, miner),
                           reason=audit.reason)

    def _after_pass(self, session: Session, job_id: str, miner: str, now: float) -> AuditResult:
        standing = read_standing(session, miner)
        released = self._release_escrow(session, miner, standing, now)
        return AuditResult(job_id=job_id, miner=miner, passed=True, duplicate=False, clawback_micro=0,
                           released_micro=released, banned=standing.banned, standing=standing)

    def _release_escrow(self, session: Session, miner: str, standing: MinerStanding, now: float) -> int:
        """Move the whole held balance to the available one, once per miner, when it has earned it."""
        if standing.is_new(self.new_miner_audits) or standing.failed or standing.banned:
            return 0
        key = release_key(miner)
        held = _sum_kinds(session, miner, ESCROWED_KINDS)
        if held <= 0 or _has_key(session, key):
            return 0
        session.add_all([
            PointsEntry(idempotency_key=f"escrow_debit:{miner}", miner_address=miner, job_id=None,
                        kind=EntryKind.ESCROW_DEBIT, amount_micro=-held, created_at=now),
            PointsEntry(idempotency_key=key, miner_address=miner, job_id=None, kind=EntryKind.ESCROW_RELEASE,
                        amount_micro=held, created_at=now),
        ])
        log.info("released %d micro-points of escrow to %s", held, miner)
        return held

    def _after_failure(self, session: Session, job_id: str, miner: str, before: MinerStanding,
                       now: float) -> AuditResult:
        clawed = self._claw_back(session, job_id, miner, now)
        if not before.suspicious:
            session.add(MinerEvent(miner_address=miner, kind=MinerEventKind.SAMPLING_RAISED,
                                   detail=f"failed audit of job {job_id}", created_at=now))
        standing = read_standing(session, miner)
        if standing.failed >= self.ban_threshold and not standing.banned:
            session.add(MinerEvent(miner_address=miner, kind=MinerEventKind.BANNED,
                                   detail=f"{standing.failed} failed audits (threshold {self.ban_threshold}); "
                                          f"last: job {job_id}", created_at=now))
            log.warning("banned miner %s after %d failed audits", miner, standing.failed)
            standing = MinerStanding(passed=standing.passed, failed=standing.failed,
                                     recent_failed=standing.recent_failed, banned=True,
                                     odd_metrics=standing.odd_metrics)
        return AuditResult(job_id=job_id, miner=miner, passed=False, duplicate=False, clawback_micro=clawed,
                           released_micro=0, banned=standing.banned, standing=standing)

    def _claw_back(self, session: Session, job_id: str, miner: str, now: float) -> int:
        """Take back what the job earned, once: from escrow while it is held, else from the available
        balance (a release moves the whole held balance, so after it the job's credit is available)."""
        key = f"clawback:{job_id}"
        if _has_key(session, key):
            return 0
        credits = session.execute(select(PointsEntry.kind, PointsEntry.amount_micro)
                                  .where(PointsEntry.job_id == job_id, PointsEntry.kind.in_(CREDIT_KINDS))).all()
        amount = sum(int(a) for _, a in credits)
        if amount <= 0:  # a late job earned nothing: nothing to take back
            return 0
        held = any(k is EntryKind.ESCROW for k, _ in credits) and not _has_key(session, release_key(miner))
        session.add(PointsEntry(idempotency_key=key, miner_address=miner, job_id=job_id,
                                kind=EntryKind.ESCROW_CLAWBACK if held else EntryKind.CLAWBACK,
                                amount_micro=-amount, created_at=now))
        return -amount

    def _event(self, miner: str, kind: MinerEventKind, detail: str) -> None:
        with session_scope(self._sessions) as session:
            session.add(MinerEvent(miner_address=miner, kind=kind, detail=detail, created_at=self.clock()))

    def flag(self, miner: str, detail: str) -> None:
        """Mark a miner's reported metrics as odd (e.g. latency impossible for its device): its jobs are
        then sampled at the suspicious rate until ``unflag``."""
        self._event(miner, MinerEventKind.FLAGGED, detail)

    def unflag(self, miner: str, detail: str) -> None:
        self._event(miner, MinerEventKind.UNFLAGGED, detail)

    def ban(self, miner: str, detail: str) -> None:
        """An operator's ban (audits ban on their own past ``ban_threshold``): hellos and completions refused."""
        self._event(miner, MinerEventKind.BANNED, detail)

    def unban(self, miner: str, detail: str) -> None:
        """An operator's pardon; the audit history stays, so the next failed audit bans again."""
        self._event(miner, MinerEventKind.UNBANNED, detail)


__all__ = [
    "BAN_THRESHOLD",
    "EPOCH_SECONDS",
    "AuditLedger",
    "AuditResult",
    "MinerBalance",
]
