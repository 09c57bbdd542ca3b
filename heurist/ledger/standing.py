"""A miner's standing: its audit record as the ledger reads it, what escrow, bans and audit sampling decide from.

The ledger owns this data (audits and miner events are its tables) and reads it while it verifies, so the
type and its reads live here; the audit package's sampler only turns a standing into a rate. Every read is
one round trip of scalar subqueries, inside the caller's session; ``read_signers`` reads many miners' at once.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ScalarSelect, Select, bindparam, func, or_, select
from sqlalchemy.orm import Session, aliased

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


def _latest(miner: Any, on: MinerEventKind, off: MinerEventKind) -> ScalarSelect[Any]:
    """The miner's latest ``on``/``off`` event kind (events are ordered by id), as a scalar subquery."""
    return (select(MinerEvent.kind).where(MinerEvent.miner_address == miner, MinerEvent.kind.in_((on, off)))
            .order_by(MinerEvent.id.desc()).limit(1).scalar_subquery())


def _count(miner: Any, outcome: AuditOutcome) -> ScalarSelect[Any]:
    return (select(func.count()).select_from(Audit)
            .where(Audit.miner_address == miner, Audit.outcome == outcome).scalar_subquery())


def _recent_failed(miner: Any, recent: int) -> ScalarSelect[Any]:
    latest = (select(Audit.outcome).where(Audit.miner_address == miner).correlate_except(Audit)
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


@functools.cache
def _signers_statement(recent: int) -> Select[Any]:
    """``read_signers``'s statement, built once (building it took as long as running it), ``addresses`` bound."""
    key = aliased(Miner)  # another key of the same broker user (operator): its ban covers this one
    user_banned = select(key.address).where(
        or_(key.address == Miner.address, key.broker_user == Miner.broker_user),
        _latest(key.address, MinerEventKind.BANNED, MinerEventKind.UNBANNED) == MinerEventKind.BANNED.value,
    ).exists()
    return select(
        Miner, _count(Miner.address, AuditOutcome.PASSED), _count(Miner.address, AuditOutcome.FAILED),
        _recent_failed(Miner.address, recent), user_banned,
        _latest(Miner.address, MinerEventKind.FLAGGED, MinerEventKind.UNFLAGGED),
    ).where(Miner.address.in_(bindparam("addresses", expanding=True)))


def read_signers(session: Session, addresses: Iterable[str],
                 recent: int = RECENT_AUDITS) -> dict[str, tuple[Miner, MinerStanding]]:
    """Each registered miner of ``addresses`` with its standing (``read_standing``, its user's bans included), in
    ONE statement however many: what a batch of deliveries reads (``heurist.ledger.verify.load_rows``).

    Why: this was 5 round trips (the miners, their audit counts, their recent failures, their users' keys, the
    latest events), 5.1 ms of the 21 ms from a completion's receipt to its client's notice in a trace of
    ``heurist bench latency`` (PostgreSQL). As correlated scalar subqueries of each miner's row it is one round
    trip: 1.3 ms, where a plain one-row SELECT of a miner takes 1.0 ms. The same subqueries as ``read_standing``,
    with the miner's column in place of its address."""
    wanted = list(dict.fromkeys(addresses))
    if not wanted:
        return {}
    rows: Any = session.execute(_signers_statement(recent), {"addresses": wanted})
    return {miner.address: (miner, MinerStanding(passed=int(passed), failed=int(failed),
                                                 recent_failed=int(recent_failed or 0), banned=bool(banned),
                                                 odd_metrics=flag == MinerEventKind.FLAGGED.value))
            for miner, passed, failed, recent_failed, banned, flag in rows}


__all__ = ["NEW_MINER_AUDITS", "RECENT_AUDITS", "MinerStanding", "read_banned", "read_signers", "read_standing",
           "read_user_banned", "release_key"]
