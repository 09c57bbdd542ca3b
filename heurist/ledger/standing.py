"""A miner's standing: its audit record as the ledger reads it, what escrow, bans and audit sampling decide from.

The ledger owns this data (audits and miner events are its tables) and reads it while it verifies, so the
type and its reads live here; the audit package's sampler only turns a standing into a rate. Every read is
one round trip of scalar subqueries, inside the caller's session; ``read_standings`` reads many miners' at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ScalarSelect, case, func, select
from sqlalchemy.orm import Session

from heurist.ledger.tables import Audit, AuditOutcome, Miner, MinerEvent, MinerEventKind

NEW_MINER_AUDITS = 5  # a miner is new (and its points sit in escrow) until this many audits pass
RECENT_AUDITS = 10  # a failure among a miner's last this-many audits makes it suspicious (frozen in 0002)


@dataclass(frozen=True)
class MinerStanding:
    """A miner's audit record, as the ledger reads it.

    ``recent_failed``: failed audits among the miner's last ``RECENT_AUDITS``; ``odd_metrics``: flagged
    for implausible reported metrics (and not unflagged since)."""

    passed: int = 0
    failed: int = 0
    recent_failed: int = 0
    banned: bool = False
    odd_metrics: bool = False

    def is_new(self, new_miner_audits: int = NEW_MINER_AUDITS) -> bool:
        return self.passed < new_miner_audits

    @property
    def audited(self) -> int:
        """Audits with a verdict, passed or failed."""
        return self.passed + self.failed

    @property
    def suspicious(self) -> bool:
        return self.banned or self.recent_failed > 0 or self.odd_metrics


def release_key(miner: str) -> str:
    """The idempotency key of a miner's one escrow release (``heurist.ledger.audit_service``): once it exists, the
    miner's credits are available, never held (``heurist.ledger.service``)."""
    return f"escrow_release:{miner}"


def _latest(miner: str, on: MinerEventKind, off: MinerEventKind) -> ScalarSelect[Any]:
    """The miner's latest ``on``/``off`` event kind (events are ordered by id), as a scalar subquery."""
    return (select(MinerEvent.kind).where(MinerEvent.miner_address == miner, MinerEvent.kind.in_((on, off)))
            .order_by(MinerEvent.id.desc()).limit(1).scalar_subquery())


def _count(miner: str, outcome: AuditOutcome) -> ScalarSelect[Any]:
    return (select(func.count()).select_from(Audit)
            .where(Audit.miner_address == miner, Audit.outcome == outcome).scalar_subquery())


def _recent_failed(miner: str, recent: int) -> ScalarSelect[Any]:
    latest = (select(Audit.outcome).where(Audit.miner_address == miner)
              .order_by(Audit.audited_at.desc(), Audit.id.desc()).limit(recent).subquery())
    return select(func.count()).select_from(latest).where(latest.c.outcome == AuditOutcome.FAILED).scalar_subquery()


def _banned_alone(session: Session, miner: str) -> bool:
    return session.scalar(select(_latest(miner, MinerEventKind.BANNED, MinerEventKind.UNBANNED))) == "banned"


def read_user_banned(session: Session, broker_user: str | None) -> bool:
    """Whether any key of broker user (operator) ``broker_user`` is banned: a ban covers all of them, the
    derived GPU-worker keys and a fresh key registered after the ban included."""
    if broker_user is None:
        return False
    keys = session.scalars(select(Miner.address).where(Miner.broker_user == broker_user)).all()
    return any(_banned_alone(session, key) for key in keys)


def read_banned(session: Session, miner: str) -> bool:
    """Whether the miner is banned now: its latest banned/unbanned event is a ban, or one of the other keys of
    its broker user (its operator) is banned."""
    if _banned_alone(session, miner):
        return True
    return read_user_banned(session, session.scalar(select(Miner.broker_user).where(Miner.address == miner)))


def read_standing(session: Session, miner: str, recent: int = RECENT_AUDITS) -> MinerStanding:
    """The miner's audit record, in one round trip: what the sampler, escrow and bans all decide from."""
    row: Any = session.execute(select(
        _count(miner, AuditOutcome.PASSED), _count(miner, AuditOutcome.FAILED), _recent_failed(miner, recent),
        _latest(miner, MinerEventKind.BANNED, MinerEventKind.UNBANNED),
        _latest(miner, MinerEventKind.FLAGGED, MinerEventKind.UNFLAGGED),
    )).one()
    passed, failed, recent_failed, ban, flag = row
    banned = ban == MinerEventKind.BANNED.value or read_banned(session, miner)
    return MinerStanding(passed=int(passed), failed=int(failed), recent_failed=int(recent_failed or 0),
                         banned=banned, odd_metrics=flag == MinerEventKind.FLAGGED.value)


def read_standings(session: Session, miners: Mapping[str, str | None],
                   recent: int = RECENT_AUDITS) -> dict[str, MinerStanding]:
    """``read_standing`` of many miners (address -> its broker user, as its ``Miner`` row has it) in four round
    trips however many they are: what a batch of deliveries reads (``heurist.ledger.batch``). Per miner that was
    five statements (its audit counts, then the ban's three or more reads)."""
    if not miners:
        return {}
    addresses = list(miners)
    counts: dict[tuple[str, AuditOutcome], int] = {}
    for miner, outcome, n in session.execute(
            select(Audit.miner_address, Audit.outcome, func.count()).where(Audit.miner_address.in_(addresses))
            .group_by(Audit.miner_address, Audit.outcome)):
        counts[(miner, outcome)] = int(n)
    ranked = select(Audit.miner_address, Audit.outcome, func.row_number().over(
        partition_by=Audit.miner_address, order_by=(Audit.audited_at.desc(), Audit.id.desc())).label("rn")
    ).where(Audit.miner_address.in_(addresses)).subquery()
    recent_failed = {str(m): int(n) for m, n in session.execute(  # type: ignore[call-overload]
        select(ranked.c.miner_address, func.count()).where(ranked.c.rn <= recent, ranked.c.outcome ==
                                                           AuditOutcome.FAILED).group_by(ranked.c.miner_address))}
    users = {user for user in miners.values() if user is not None}
    keys = list(session.execute(select(Miner.address, Miner.broker_user).where(Miner.broker_user.in_(users)))) \
        if users else []
    latest = _latest_events(session, set(addresses) | {key for key, _ in keys})
    banned_users = {user for key, user in keys if latest.get((key, BAN)) == MinerEventKind.BANNED}
    return {m: MinerStanding(passed=counts.get((m, AuditOutcome.PASSED), 0),
                             failed=counts.get((m, AuditOutcome.FAILED), 0), recent_failed=recent_failed.get(m, 0),
                             banned=latest.get((m, BAN)) == MinerEventKind.BANNED or user in banned_users,
                             odd_metrics=latest.get((m, FLAG)) == MinerEventKind.FLAGGED)
            for m, user in miners.items()}


BAN, FLAG = "ban", "flag"
_PAIRS = {MinerEventKind.BANNED: BAN, MinerEventKind.UNBANNED: BAN, MinerEventKind.FLAGGED: FLAG,
          MinerEventKind.UNFLAGGED: FLAG}


def _latest_events(session: Session, addresses: set[str]) -> dict[tuple[str, str], MinerEventKind]:
    """Each miner's latest event of each pair (banned/unbanned, flagged/unflagged), by id, in one query."""
    pair = case((MinerEvent.kind.in_((MinerEventKind.BANNED, MinerEventKind.UNBANNED)), BAN), else_=FLAG)
    ranked = select(MinerEvent.miner_address, MinerEvent.kind, func.row_number().over(
        partition_by=(MinerEvent.miner_address, pair), order_by=MinerEvent.id.desc()).label("rn")
    ).where(MinerEvent.miner_address.in_(addresses), MinerEvent.kind.in_(list(_PAIRS))).subquery()
    rows = session.execute(select(ranked.c.miner_address, ranked.c.kind).where(ranked.c.rn == 1))
    return {(m, _PAIRS[MinerEventKind(k)]): MinerEventKind(k) for m, k in rows.tuples()}


__all__ = ["NEW_MINER_AUDITS", "RECENT_AUDITS", "MinerStanding", "read_banned", "read_standing", "read_standings",
           "read_user_banned", "release_key"]
