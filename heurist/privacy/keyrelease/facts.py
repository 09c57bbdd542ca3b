"""What a key-release node reads from the ledger about one requester before it evaluates a job's ACC.

All of it from the trusted side's own tables, never from what the requester says: its latest privacy
registration (the X25519 key a share is sealed to), whether it is privacy-enabled now
(``registry.why_not``), its audit reputation (``AuditLedger.reputation``: 0.5 with no audits, 0 once banned)
and the HUE and esHUE staked on it (``economy_accounts`` of kind stake whose node is the requester, summed in
Python since amounts are text on SQLite, as ``heurist.economy.views.nodes`` does). A few small queries per
request: a node answers a miner's request in a few milliseconds, next to a job's seconds.
"""

from __future__ import annotations

from nacl.public import PublicKey
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from heurist.db.engine import session_scope
from heurist.economy.tables import Account, AccountKind
from heurist.ledger.audit_service import AuditLedger
from heurist.privacy.acc import Facts
from heurist.privacy.envelope import public_key
from heurist.privacy.keyrelease.registry import NOT_REGISTERED, checksummed, read_state, why_not
from heurist.signing import DEFAULT_DOMAIN, Domain


def read_facts(engine: Engine, address: str, *, policy_version: str, tee_required: bool,
               approver: str | None = None, domain: Domain = DEFAULT_DOMAIN
               ) -> tuple[Facts | None, str | None, PublicKey | None]:
    """``(None, NOT_REGISTERED, None)`` for an address with no privacy registration whose signature holds (a
    public miner); else its facts, why it is not privacy-enabled (None when it is) and its registered X25519 key.
    Only signed rows count: the registration by the address itself, the approval by ``approver`` if one is set."""
    who = checksummed(address)
    with session_scope(engine) as session:
        state = read_state(session, who, approver, domain)
        if state.registration is None:
            return None, NOT_REGISTERED, None
        stake = staked_units(session, who)
    reason = why_not(state, policy_version, tee_required)
    facts = Facts(address=who, privacy_enabled=reason is None, reputation=AuditLedger(engine).reputation(who),
                  stake_units=stake)
    return facts, reason, public_key(state.registration.x25519_public_key, "x25519_public_key")


def staked_units(session: Session, node: str) -> int:
    """HUE and esHUE base units staked on ``node`` by anyone, itself included."""
    balances = session.scalars(select(Account.balance).where(Account.kind == AccountKind.STAKE,
                                                             Account.node == node))
    return sum(int(b) for b in balances)


__all__ = ["read_facts", "staked_units"]
