"""Who is on the network: each registered miner with its tier, models, uptime, last heartbeat and reputation.

What `heurist miners` prints and operators script against (``--json``). Read-only; a few queries per miner,
which is fine for a report and not on any job's path.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import Engine, func, select

from heurist.catalog import Catalog
from heurist.db.engine import session_factory
from heurist.ledger.audit_service import AuditLedger
from heurist.ledger.tables import Miner, PointsEntry
from heurist.ledger.uptime import UptimeBook
from heurist.points import MICRO
from heurist.routing import miner_tier


class Presence(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"
    BANNED = "banned"


@dataclass(frozen=True)
class MinerStatus:
    address: str
    presence: Presence
    tier: str | None
    models: list[str]
    device: str
    first_seen: float
    last_seen: float
    uptime: float  # this epoch so far
    uptime_last_epoch: float
    reputation: float
    points: float

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "presence": self.presence.value}


class Roster:
    """Builds ``MinerStatus`` rows from the miners table, the uptime book and the audit record."""

    def __init__(self, engine: Engine, catalog: Catalog, uptime: UptimeBook, offline_after_s: float) -> None:
        self.catalog = catalog
        self.uptime = uptime
        self.offline_after_s = offline_after_s
        self.audits = AuditLedger(engine)
        self._sessions = session_factory(engine)

    def statuses(self) -> list[MinerStatus]:
        """Every registered miner, online ones first, then by address."""
        points = (select(func.sum(PointsEntry.amount_micro)).where(PointsEntry.miner_address == Miner.address)
                  .correlate(Miner).scalar_subquery())
        with self._sessions() as session:
            rows = session.execute(select(Miner, points)).tuples().all()
        now = self.uptime.clock()
        current = self.uptime.epochs.epoch(now)
        last = self.uptime.epoch_uptimes(current - 1)
        result = [self._status(miner, int(micro or 0), now, last.get(miner.address, 0.0)) for miner, micro in rows]
        return sorted(result, key=lambda s: (s.presence is not Presence.ONLINE, s.address))

    def _status(self, miner: Miner, points_micro: int, now: float, uptime_last_epoch: float) -> MinerStatus:
        if self.audits.is_banned(miner.address):
            presence = Presence.BANNED
        elif now - miner.last_seen <= self.offline_after_s:
            presence = Presence.ONLINE
        else:
            presence = Presence.OFFLINE
        return MinerStatus(
            address=miner.address, presence=presence, tier=miner_tier(self.catalog, miner.models),
            models=list(miner.models), device=str(miner.device.get("name", "?")), first_seen=miner.first_seen,
            last_seen=miner.last_seen, uptime=self.uptime.uptime(miner.address),
            uptime_last_epoch=uptime_last_epoch, reputation=self.audits.reputation(miner.address),
            points=points_micro / MICRO,
        )
