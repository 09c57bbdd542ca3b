"""What auditors ask of the ledger: per miner, points by balance, audit outcomes, flags, reputation."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from sqlalchemy import select

from heurist.ledger.audit_service import AuditLedger
from heurist.ledger.tables import Miner
from heurist.points import from_micro


@dataclass(frozen=True)
class MinerAudit:
    address: str
    points: float  # available + held, net of clawbacks
    available: float
    escrowed: float
    clawed_back: float
    audits_passed: int
    audits_failed: int
    flagged: bool
    banned: bool
    reputation: float

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def miner_audit(audits: AuditLedger, address: str) -> MinerAudit:
    balance = audits.balance(address)
    standing = audits.standing(address)
    return MinerAudit(
        address=address, points=from_micro(balance.total_micro), available=from_micro(balance.credited_micro),
        escrowed=from_micro(balance.escrowed_micro), clawed_back=from_micro(balance.clawed_back_micro),
        audits_passed=standing.passed, audits_failed=standing.failed, flagged=standing.suspicious,
        banned=standing.banned, reputation=round(audits.reputation(address), 4),
    )


def audit_report(audits: AuditLedger, miner: str | None = None) -> list[MinerAudit]:
    """Every registered miner (or one), most points first."""
    if miner is not None:
        return [miner_audit(audits, miner)]
    with audits.engine.connect() as conn:
        addresses = list(conn.scalars(select(Miner.address)))
    return sorted((miner_audit(audits, a) for a in addresses), key=lambda m: (-m.points, m.address))
