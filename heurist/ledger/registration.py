"""Miner registration: a signed hello proves a miner holds its key; only then may its completions be credited.

The first hello records the miner; later ones refresh its last_seen, models and device. A banned miner's
hello is refused (``heurist.ledger.standing``). The record is one upsert, so two hellos at once cannot
collide on the primary key.

On RabbitMQ the hello arrives in its broker user's inbox (``sender``, validated by the broker), and that
user is one operator, ``miner-<operator address>``. A key registers under it only if it is the operator's
own key or one the operator vouched for (a GPU worker's: ``heurist.signing.sign_delegation``), and a key
stays bound to the user it first registered under. So a stranger cannot register keys on someone else's
user, and a banned operator cannot come back with a fresh key on the same user (``read_user_banned``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from heurist.access.backend import address_of
from heurist.db.engine import session_scope
from heurist.jobs import SignedHello
from heurist.ledger.standing import read_banned, read_user_banned
from heurist.ledger.tables import Miner, Reason
from heurist.signing import DEFAULT_DOMAIN, Domain, delegation_signer, message_signer

log = logging.getLogger(__name__)

# Dialects with INSERT … ON CONFLICT DO UPDATE; on others a hello reads the miner, then inserts or updates it.
UPSERT_DIALECTS = ("sqlite", "postgresql")


@dataclass(frozen=True)
class RegistrationVerdict:
    """Whether a miner's hello proved its key; ``address`` is the checksummed signer when accepted."""

    accepted: bool
    address: str
    reason: Reason | None = None


def owned_by(signed: SignedHello, signer: str, sender: str, domain: Domain = DEFAULT_DOMAIN) -> bool:
    """Whether broker user ``sender`` may register key ``signer``: it is the user's operator key, or the hello
    carries that operator's signature of it."""
    operator = address_of(sender)
    if operator is None:
        return False
    if signer.lower() == operator:
        return True
    vouched = signed.operator_signature and delegation_signer(signer, signed.operator_signature, domain)
    return bool(vouched) and str(vouched).lower() == operator and (signed.hello.operator or "").lower() == operator


def register_miner(engine: Engine, sessions: sessionmaker[Session], clock: Callable[[], float],
                   signed: SignedHello, sender: str | None = None,
                   domain: Domain = DEFAULT_DOMAIN) -> RegistrationVerdict:
    """Record a miner that proved it holds its key; later hellos refresh last_seen, models, device.
    ``sender``: the broker user whose inbox brought the hello (None: the embedded broker, or a trusted user)."""
    hello = signed.hello
    signer = message_signer(hello, signed.signature, domain)
    if signer is None or signer.lower() != hello.miner.lower():
        log.warning("refused hello claiming %s: signature does not recover to it", hello.miner)
        return RegistrationVerdict(accepted=False, address=hello.miner, reason=Reason.BAD_SIGNATURE)
    if sender is not None and not owned_by(signed, signer, sender, domain):
        log.warning("refused hello of %s from broker user %s: not that operator's key", signer, sender)
        return RegistrationVerdict(accepted=False, address=signer, reason=Reason.WRONG_SENDER)
    with sessions() as session:
        bound = session.scalar(select(Miner.broker_user).where(Miner.address == signer))
        if sender is not None and bound is not None and bound != sender:
            log.warning("refused hello of %s from broker user %s: bound to %s", signer, sender, bound)
            return RegistrationVerdict(accepted=False, address=signer, reason=Reason.WRONG_SENDER)
        if read_banned(session, signer) or read_user_banned(session, sender):
            log.warning("refused hello from banned miner %s (broker user %s)", signer, sender)
            return RegistrationVerdict(accepted=False, address=signer, reason=Reason.BANNED)
    now = clock()
    values = {"address": signer, "first_seen": now, "last_seen": now, "models": list(hello.models),
              "device": hello.device.model_dump(mode="json"), "broker_user": sender}
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
            existing.broker_user = existing.broker_user or values["broker_user"]
        return
    insert = sqlite.insert if dialect == "sqlite" else postgresql.insert
    stmt = insert(Miner).values(**values)
    session.execute(stmt.on_conflict_do_update(
        index_elements=[Miner.address],
        set_={"last_seen": stmt.excluded.last_seen, "models": stmt.excluded.models,
              "device": stmt.excluded.device,
              "broker_user": func.coalesce(Miner.broker_user, stmt.excluded.broker_user)},
    ))


__all__ = ["RegistrationVerdict", "register_miner"]
