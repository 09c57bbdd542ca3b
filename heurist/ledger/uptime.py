"""Miner availability: signed heartbeats counted per epoch, the uptime factor of epoch rewards.

Time is cut into slots of ``interval_s``; an epoch of ``epoch_s`` holds ``epoch_s / interval_s`` of them. A
heartbeat marks the slot the *ledger* received it in (a miner's own clock is a claim): a miner earns a slot
by being heard in it, and more heartbeats than one per slot earn nothing. A heartbeat signed more than
``max_age_s`` before or after the ledger's now is refused, so one cannot be saved up and replayed to fill a
gap later. Uptime of an epoch = slots heard / slots in the epoch (the epoch so far, for the current one).
A heartbeat counts only while its broker user holds a consumer (``serving``: ``heurist.ledger.serving``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Engine, case, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from heurist.db.engine import session_factory, session_scope
from heurist.jobs import SignedHeartbeat
from heurist.ledger.standing import read_banned
from heurist.ledger.tables import Miner, MinerUptime, Reason
from heurist.signing import DEFAULT_DOMAIN, Domain, message_signer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HeartbeatVerdict:
    accepted: bool
    address: str
    reason: Reason | None = None
    detail: str = ""


@dataclass(frozen=True)
class EpochClock:
    """Slot and epoch arithmetic, shared by the ledger (writing) and reports (reading)."""

    interval_s: float
    epoch_s: int

    def slot(self, t: float) -> int:
        return math.floor(t / self.interval_s)

    def epoch(self, t: float) -> int:
        return math.floor(t / self.epoch_s)

    @property
    def slots_per_epoch(self) -> int:
        return max(1, math.ceil(self.epoch_s / self.interval_s))

    def slots_elapsed(self, epoch: int, now: float) -> int:
        """Slots of ``epoch`` that have begun by ``now`` (all of them for a past epoch)."""
        if self.epoch(now) != epoch:
            return self.slots_per_epoch
        return min(self.slots_per_epoch, self.slot(now) - self.slot(epoch * self.epoch_s) + 1)


class UptimeBook:
    """Records heartbeats and reads uptime. Thread-safe: one session per call, one upsert per heartbeat."""

    def __init__(self, engine: Engine, epochs: EpochClock, clock: Callable[[], float] = time.time,
                 max_age_s: float | None = None, domain: Domain = DEFAULT_DOMAIN,
                 serving: Callable[[str], bool] | None = None) -> None:
        """``serving``: whether a broker user holds a consumer now (None: not checked, the embedded broker)."""
        self.engine = engine
        self.domain = domain
        self.serving = serving
        self.epochs = epochs
        self.clock = clock
        self.max_age_s = max_age_s if max_age_s is not None else max(60.0, 2 * epochs.interval_s)
        self._sessions = session_factory(engine)

    def record(self, signed: SignedHeartbeat, sender: str | None = None) -> HeartbeatVerdict:
        """Verify a heartbeat and count its slot once; refusals are verdicts (logged), not errors. ``sender``: the
        broker user whose inbox brought it, which must be the one the key is bound to (None: not checked)."""
        beat = signed.heartbeat
        signer = message_signer(beat, signed.signature, self.domain)
        if signer is None or signer.lower() != beat.miner.lower():
            return self._refuse(beat.miner, Reason.BAD_SIGNATURE, "signature does not recover to the miner")
        now = self.clock()
        if abs(now - beat.sent_at) > self.max_age_s:
            return self._refuse(signer, Reason.LATE, f"signed {now - beat.sent_at:+.0f}s from the ledger's clock")
        with session_scope(self._sessions) as session:
            miner = session.get(Miner, signer)
            if miner is None:
                return self._refuse(signer, Reason.UNKNOWN_SIGNER, "no hello from this miner yet")
            if sender is not None and sender != miner.broker_user:
                return self._refuse(signer, Reason.WRONG_SENDER, f"sent by broker user {sender}, not its own")
            if read_banned(session, signer):
                return self._refuse(signer, Reason.BANNED, "banned")
            if self.serving is not None and miner.broker_user is not None and not self.serving(miner.broker_user):
                return self._refuse(signer, Reason.NOT_SERVING, f"broker user {miner.broker_user} consumes nothing")
            session.execute(update(Miner).where(Miner.address == signer)
                            .values(last_seen=func.max(Miner.last_seen, now) if _is_sqlite(session)
                                    else func.greatest(Miner.last_seen, now)))
            self._count_slot(session, signer, now)
        return HeartbeatVerdict(accepted=True, address=signer)

    def _count_slot(self, session: Session, address: str, now: float) -> None:
        """+1 slot unless this slot was already heard: one statement, so concurrent heartbeats cannot race."""
        slot, epoch = self.epochs.slot(now), self.epochs.epoch(now)
        insert = sqlite.insert if _is_sqlite(session) else postgresql.insert
        stmt = insert(MinerUptime).values(address=address, epoch=epoch, slots=1, last_slot=slot)
        newer = stmt.excluded.last_slot > MinerUptime.last_slot
        session.execute(stmt.on_conflict_do_update(
            index_elements=[MinerUptime.address, MinerUptime.epoch],
            set_={"slots": MinerUptime.slots + case((newer, 1), else_=0),
                  "last_slot": case((newer, stmt.excluded.last_slot), else_=MinerUptime.last_slot)},
        ))

    @staticmethod
    def _refuse(address: str, reason: Reason, detail: str) -> HeartbeatVerdict:
        log.warning("refused heartbeat from %s: %s", address, detail)
        return HeartbeatVerdict(accepted=False, address=address, reason=reason, detail=detail)

    # ----------------------------------------------------------------------------------------- reads

    def uptime(self, address: str, epoch: int | None = None) -> float:
        """The share of ``epoch``'s slots (default: the current epoch so far) the miner was heard in."""
        now = self.clock()
        epoch = self.epochs.epoch(now) if epoch is None else epoch
        with self._sessions() as session:
            slots = session.scalar(select(MinerUptime.slots).where(
                MinerUptime.address == address, MinerUptime.epoch == epoch)) or 0
        return min(1.0, slots / self.epochs.slots_elapsed(epoch, now))

    def epoch_uptimes(self, epoch: int) -> dict[str, float]:
        """Every miner heard in ``epoch``, with its uptime there (what the epoch's rewards multiply by)."""
        now = self.clock()
        with self._sessions() as session:
            rows = session.execute(select(MinerUptime.address, MinerUptime.slots)
                                   .where(MinerUptime.epoch == epoch)).all()
        elapsed = self.epochs.slots_elapsed(epoch, now)
        return {address: min(1.0, slots / elapsed) for address, slots in rows}


def _is_sqlite(session: Session) -> bool:
    return session.get_bind().dialect.name == "sqlite"
