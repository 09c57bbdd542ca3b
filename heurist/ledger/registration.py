"""Miner registration: a signed hello proves a miner holds its key; only then may its completions be credited.

The first hello records the miner; later ones refresh its last_seen, models and device. A banned miner's
hello is refused (``heurist.ledger.standing``). The record is one upsert, so two hellos at once cannot
collide on the primary key.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from heurist.db.engine import session_scope
from heurist.identity import recover_signer
from heurist.jobs import SignedHello
from heurist.ledger.standing import read_banned
from heurist.ledger.tables import Miner, Reason

log = logging.getLogger(__name__)

# Dialects with INSERT … ON CONFLICT DO UPDATE; on others a hello reads the miner, then inserts or updates it.
UPSERT_DIALECTS = ("sqlite", "postgresql")


@dataclass(frozen=True)
class RegistrationVerdict:
    """Whether a miner's hello proved its key; ``address`` is the checksummed signer when accepted."""

    accepted: bool
    address: str
    reason: Reason | None = None


def register_miner(engine: Engine, sessions: sessionmaker[Session], clock: Callable[[], float],
                   signed: SignedHello) -> RegistrationVerdict:
    """Record a miner that proved it holds its key; later hellos refresh last_seen, models, device."""
    hello = signed.hello
    signer = recover_signer(hello.signing_payload(), signed.signature)
    if signer is None or signer.lower() != hello.miner.lower():
        log.warning("refused hello claiming %s: signature does not recover to it", hello.miner)
        return RegistrationVerdict(accepted=False, address=hello.miner, reason=Reason.BAD_SIGNATURE)
    with sessions() as session:
        if read_banned(session, signer):
            log.warning("refused hello from banned miner %s", signer)
            return RegistrationVerdict(accepted=False, address=signer, reason=Reason.BANNED)
    now = clock()
    values = {"address": signer, "first_seen": now, "last_seen": now, "models": list(hello.models),
              "device": hello.device.model_dump(mode="json")}
    with session_scope(sessions) as session:
        _upsert_miner(engine.dialect.name, session, values)
    return RegistrationVerdict(accepted=True, address=signer)


def _upsert_miner(dialect: str, session: Session, values: dict[str, Any]) -> None:
    """Insert or refresh in one statement, so two hellos at once cannot collide on the primary key."""
    if dialect not in UPSERT_DIALECTS:
        existing = session.get(Miner, values["address"])
        if existing is None:
            session.add(Miner(**values))
        else:
            existing.last_seen, existing.models, existing.device = (
                values["last_seen"], values["models"], values["device"])
        return
    insert = sqlite.insert if dialect == "sqlite" else postgresql.insert
    stmt = insert(Miner).values(**values)
    session.execute(stmt.on_conflict_do_update(
        index_elements=[Miner.address],
        set_={"last_seen": stmt.excluded.last_seen, "models": stmt.excluded.models,
              "device": stmt.excluded.device},
    ))


__all__ = ["RegistrationVerdict", "register_miner"]
