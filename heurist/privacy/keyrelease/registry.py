"""Who is a privacy miner: signed registrations a miner sends, and the operator's approvals, both append-only.

A miner (or an auditor) sends a ``SignedRegistration`` to the ledger's inbox when it starts with ``--private``.
It is recorded only after the same checks as a failure report (``heurist.ledger.failures``), in order: the
signature recovers to the miner it names; that miner sent a signed hello (a ``miners`` row); on RabbitMQ it came
from the broker user that key is bound to; it is not banned; and ``registered_at`` is within 300 s of the
ledger's clock, so a registration captured today cannot be replayed next month to undo a later one. Refusals are
logged, not stored: a flood of them must not grow the database.

The TEE attestation is reserved: with no verifier configured (``HEURIST_PRIVACY_TEE_VERIFIER`` unset) it is
recorded as ``absent``. No verifier is implemented, so naming one records every attestation as ``refused``
(with a log line saying so) and nobody is privacy-enabled while one is required: it fails closed.

A miner is privacy-enabled (``why_not`` is None) when its latest registration accepts the current policy
version, the operator's latest decision on it is an approval, it is not banned, and, when a verifier is
configured, its attestation was verified. ``heurist privacy approve|revoke|list|status`` call this module.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from eth_utils.address import to_checksum_address
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from heurist.db.engine import session_scope
from heurist.errors import HeuristError
from heurist.identity import Wallet
from heurist.ledger.locks import lock_miner
from heurist.ledger.standing import read_banned
from heurist.ledger.tables import Miner
from heurist.privacy.envelope import PrivacyError, public_key, seal_to
from heurist.privacy.messages import PrivacyApproval, PrivacyRegistration, SignedRegistration
from heurist.privacy.tables import Approval, Registration, TeeStatus
from heurist.settings_privacy import DEFAULT_POLICY_VERSION
from heurist.signing import DEFAULT_DOMAIN, Domain, message_signer, sign_message

log = logging.getLogger(__name__)

FRESH_S = 300.0  # a registration's registered_at may be this far from the ledger's clock, either way
CHANGE_EVERY_S = 600.0  # a changed registration is kept at most this often per address
UNCHANGED = "unchanged"
CHECKED_ROWS = 8  # registrations a node looks back through for one whose signature holds
OPERATOR_CHARS, NOTE_CHARS = 128, 500  # privacy_approvals' column sizes
NOT_REGISTERED = "not a registered privacy miner (it sent no privacy registration: `heurist miner --private`)"


class RegistryError(HeuristError):
    """An operator's privacy command that cannot be applied; the message says what to do instead."""


@dataclass(frozen=True)
class PrivacyState:
    """What the ledger holds on one address: its latest registration and approval, and whether it is banned."""

    address: str
    registration: Registration | None
    approval: Approval | None
    banned: bool


# ---------------------------------------------------------------------------------------------- registration


def record_registration(engine: Engine, signed: SignedRegistration, sender: str | None, *, domain: Domain,
                        policy_version: str, tee_verifier: str | None, now: float) -> str | None:
    """Append a believed registration; the refusal reason (logged, nothing stored) or None when recorded.
    ``sender``: the broker user whose inbox brought it (None: the embedded broker)."""
    claim = signed.registration
    signer = message_signer(claim, signed.signature, domain)
    if signer is None or signer.lower() != claim.miner.lower():
        return _refused(claim.miner, "bad signature: it does not recover to the registration's miner")
    if not usable_key(claim.x25519_public_key):
        return _refused(signer, "x25519_public_key is not a usable X25519 public key (a low-order point)")
    with session_scope(engine) as session:
        # judged one at a time per miner: two copies side by side both found no earlier row (heurist.ledger.locks)
        reason = _refusal(lock_miner(session, signer), sender, read_banned(session, signer),
                          claim.registered_at, now) or _repeat(latest_registration(session, signer), claim, now)
        if reason == UNCHANGED:
            return None
        if reason is not None:
            return _refused(signer, reason)
        session.add(_row(signer, signed, _tee_status(signer, claim.tee_attestation, tee_verifier), now))
    if claim.policy_version != policy_version:
        log.warning("recorded privacy registration of %s for policy %r, not the current %r: it is not "
                    "privacy-enabled until it registers for the current one", signer, claim.policy_version,
                    policy_version)
    else:
        log.info("recorded privacy registration of %s (policy %s)", signer, claim.policy_version)
    return None


def record_trusted(engine: Engine, signed: SignedRegistration, now: float) -> bool:
    """Record a trusted process's own registration (an auditor's: it holds the database and is no miner, so no
    hello, broker user or ban applies); nothing when it is unchanged (a restart). True when a row was added."""
    claim = signed.registration
    with session_scope(engine) as session:
        if _repeat(latest_registration(session, claim.miner), claim, now) == UNCHANGED:
            return False
        session.add(_row(claim.miner, signed, TeeStatus.ABSENT, now))
    return True


def _row(address: str, signed: SignedRegistration, tee_status: TeeStatus, now: float) -> Registration:
    claim = signed.registration
    return Registration(address=address, x25519_public_key=claim.x25519_public_key,
                        policy_version=claim.policy_version, signature=signed.signature,
                        tee_attestation=claim.tee_attestation, tee_status=tee_status,
                        registered_at=claim.registered_at, received_at=now)


def _refusal(miner: Miner | None, sender: str | None, banned: bool, registered_at: float, now: float) -> str | None:
    if miner is None:
        return "unknown miner: it sent no signed hello (a miner registers with the ledger when it starts)"
    if sender is not None and sender != miner.broker_user:
        return f"wrong sender: broker user {sender} is not the one key {miner.address} is bound to"
    if banned:
        return "banned"
    if abs(now - registered_at) > FRESH_S:
        return (f"stale: registered_at is {now - registered_at:.0f} s from the ledger's clock (at most "
                f"{FRESH_S:.0f} s either way); check the miner's clock")
    return None


def _repeat(latest: Registration | None, claim: PrivacyRegistration, now: float) -> str | None:
    """A miner re-registers at every start: the same key, policy and attestation add no row (``UNCHANGED``); a
    changed one is kept at most every ``CHANGE_EVERY_S``, and never one older than the recorded one. Bounds what
    a hostile miner can store: 16 KB of attestation per 10 minutes."""
    if latest is None:
        return None
    same = (latest.x25519_public_key, latest.policy_version, latest.tee_attestation) == \
        (claim.x25519_public_key, claim.policy_version, claim.tee_attestation)
    if same:
        return UNCHANGED
    if claim.registered_at <= latest.registered_at:
        return "older than its recorded registration"
    if now - latest.received_at < CHANGE_EVERY_S:
        return (f"changed again {now - latest.received_at:.0f} s after the last change (at most one change every "
                f"{CHANGE_EVERY_S:.0f} s)")
    return None


def usable_key(hex_key: str) -> bool:
    """Whether libsodium can seal to this X25519 key (a low-order point, all zeros say, makes it fail)."""
    try:
        seal_to(public_key(hex_key, "x25519_public_key"), b"probe")
    except (PrivacyError, RuntimeError, ValueError):
        return False
    return True


def _refused(claimed: str, reason: str) -> str:
    log.warning("refused privacy registration claiming %s: %s", claimed, reason)
    return reason


def _tee_status(address: str, attestation: str | None, verifier: str | None) -> TeeStatus:
    if attestation is None or verifier is None:
        return TeeStatus.ABSENT
    log.warning("TEE attestation of %s refused: no TEE verifier named %r is available (unset "
                "HEURIST_PRIVACY_TEE_VERIFIER to record attestations as absent)", address, verifier)
    return TeeStatus.REFUSED


# ------------------------------------------------------------------------------------------------- approval


def approve(engine: Engine, address: str, approved: bool, operator: str, note: str, now: float,
            signer: Wallet | None = None, domain: Domain = DEFAULT_DOMAIN) -> dict[str, Any]:
    """Append the operator's approval (or, ``approved`` False, revocation) of a registered address, signed by
    ``signer`` (the approver key nodes are configured with; None: unsigned, counted only where none is)."""
    who = checksummed(address)
    if not 1 <= len(operator) <= OPERATOR_CHARS:
        raise RegistryError(f"--operator: 1 to {OPERATOR_CHARS} characters, got {len(operator)}")
    if len(note) > NOTE_CHARS:
        raise RegistryError(f"--note: at most {NOTE_CHARS} characters, got {len(note)}; shorten it")
    with session_scope(engine) as session:
        if latest_registration(session, who) is None:
            raise RegistryError(f"{who} has no privacy registration: a miner registers with `heurist miner "
                                "--private`; `heurist privacy list` shows those that did")
        row = Approval(address=who, approved=approved, operator=operator, note=note, at=now)
        if signer is not None:
            decision = PrivacyApproval(address=who, approved=approved, note=note, at=now)
            row.approver, row.signature = signer.address, sign_message(signer, decision, domain)
        session.add(row)
    log.info("%s %s privacy miner %s%s", operator, "approved" if approved else "revoked", who,
             f": {note}" if note else "")
    return _approval(row) | {"address": who}


# ------------------------------------------------------------------------------------------------------ reads


def checksummed(address: str) -> str:
    try:
        return str(to_checksum_address(address.strip()))
    except (ValueError, TypeError, AttributeError):
        raise RegistryError(f"address: {address!r} is not an address (0x and 40 hex digits)") from None


def latest_registration(session: Session, address: str) -> Registration | None:
    return session.scalar(select(Registration).where(Registration.address == address)
                          .order_by(Registration.id.desc()).limit(1))


def latest_approval(session: Session, address: str, approver: str | None = None,
                    domain: Domain = DEFAULT_DOMAIN) -> Approval | None:
    """The latest decision on ``address`` that counts: with an ``approver``, the latest signed by it (a row
    someone wrote into the database without its key is skipped, approve or revoke alike)."""
    rows = session.scalars(select(Approval).where(Approval.address == address).order_by(Approval.id.desc()))
    for row in rows:
        if approver is None or _signed_by(row, approver, domain):
            return row
    return None


def _signed_by(row: Approval, approver: str, domain: Domain) -> bool:
    if row.signature is None:
        return False
    decision = PrivacyApproval(address=row.address, approved=row.approved, note=row.note, at=row.at)
    signer = message_signer(decision, row.signature, domain)
    return signer is not None and signer.lower() == approver.lower()


def signed_registration(session: Session, address: str, domain: Domain = DEFAULT_DOMAIN) -> Registration | None:
    """The latest registration whose stored signature still recovers to ``address``: a key-release node re-checks
    it, so a row written into the database (someone else's X25519 key under a victim's address) is ignored."""
    rows = session.scalars(select(Registration).where(Registration.address == address)
                           .order_by(Registration.id.desc()).limit(CHECKED_ROWS))
    for row in rows:
        claim = PrivacyRegistration(miner=row.address, x25519_public_key=row.x25519_public_key,
                                    policy_version=row.policy_version, tee_attestation=row.tee_attestation,
                                    registered_at=row.registered_at)
        signer = message_signer(claim, row.signature, domain)
        if signer is not None and signer.lower() == address.lower():
            return row
    return None


def read_state(session: Session, address: str, approver: str | None = None, domain: Domain | None = None
               ) -> PrivacyState:
    """What the ledger holds on ``address``. With a ``domain`` (a key-release node's), only rows whose signatures
    hold count: the registration's by the miner, the approval's by ``approver``."""
    if domain is None:
        return PrivacyState(address, latest_registration(session, address), latest_approval(session, address),
                            read_banned(session, address))
    return PrivacyState(address, signed_registration(session, address, domain),
                        latest_approval(session, address, approver, domain), read_banned(session, address))


def why_not(state: PrivacyState, policy_version: str, tee_required: bool) -> str | None:
    """Why the address is not privacy-enabled now, or None when it is."""
    reg, approval = state.registration, state.approval
    if reg is None:
        return NOT_REGISTERED
    if reg.policy_version != policy_version:
        return f"its registration accepts policy {reg.policy_version!r}, not the current {policy_version!r}"
    if approval is None:
        return "not approved by an operator (`heurist privacy approve ADDR`)"
    if not approval.approved:
        return f"revoked by {approval.operator}" + (f" ({approval.note})" if approval.note else "")
    if state.banned:
        return "banned"
    if tee_required and reg.tee_status is not TeeStatus.VERIFIED:
        return f"no verified TEE attestation (its attestation is {reg.tee_status.value})"
    return None


def status(engine: Engine, address: str, policy_version: str = DEFAULT_POLICY_VERSION,
           tee_required: bool = False, approver: str | None = None, domain: Domain | None = None) -> dict[str, Any]:
    """The address's registration, approval, whether it is privacy-enabled now and, if not, why not (with a
    ``domain``, as the key-release nodes see it: only rows whose signatures hold)."""
    with session_scope(engine) as session:
        who = checksummed(address)
        shown, counted = read_state(session, who), read_state(session, who, approver, domain)
    return _view(shown, counted, policy_version, tee_required)


def list_all(engine: Engine, *, policy_version: str = DEFAULT_POLICY_VERSION, tee_required: bool = False,
             approver: str | None = None, domain: Domain | None = None) -> list[dict[str, Any]]:
    """``status`` of every address that ever registered, by address (a few queries each: privacy miners are a
    short, approved list)."""
    with session_scope(engine) as session:
        addresses = session.scalars(select(Registration.address).distinct().order_by(Registration.address)).all()
        states = [(read_state(session, a), read_state(session, a, approver, domain)) for a in addresses]
    return [_view(shown, counted, policy_version, tee_required) for shown, counted in states]


def _view(state: PrivacyState, counted: PrivacyState, policy_version: str, tee_required: bool) -> dict[str, Any]:
    """``state``: the latest rows, shown; ``counted``: those whose signatures hold (with a domain), which the
    verdict is read from, as the key-release nodes read it."""
    reg = state.registration
    reason = why_not(counted, policy_version, tee_required)
    if counted.registration is not reg and reg is not None:
        reason = "its latest registration's signature does not hold (written into the database by hand?)"
    elif counted.approval is not state.approval and reason is None:
        reason = "its latest decision is not signed by the approver key"
    return {"address": state.address, "privacy_enabled": reason is None, "why_not": reason,
            "banned": state.banned,
            "registration": None if reg is None else {
                "x25519_public_key": reg.x25519_public_key, "policy_version": reg.policy_version,
                "tee_status": reg.tee_status.value, "registered_at": reg.registered_at,
                "received_at": reg.received_at},
            "approval": None if state.approval is None else _approval(state.approval)}


def _approval(row: Approval) -> dict[str, Any]:
    return {"approved": row.approved, "operator": row.operator, "note": row.note, "at": row.at,
            "approver": row.approver}


__all__ = ["FRESH_S", "NOT_REGISTERED", "PrivacyState", "RegistryError", "approve", "checksummed", "list_all",
           "read_state", "record_registration", "record_trusted", "status", "why_not"]
