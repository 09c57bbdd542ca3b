"""The economy's front door: genesis, signed actions, and what the CLI and the gateway read.

Every write is one database transaction: verify the signature (``heurist.economy.actions``), plan the legs
(``heurist.economy.handlers``), post them (``heurist.economy.book``). The nonce is part of the book's unique
key, so a replay is refused however the two copies race; a failure anywhere rolls everything back.

Where there is a choice of clock, the economy uses its own (``clock``, the ledger host's): a signed message
carries no time, so a signer cannot date an unstake back to end its lock early.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from eth_utils import to_checksum_address
from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from heurist.db.engine import session_scope
from heurist.economy.actions import Action, EconomyDomain, FundKey, SetBribe, Signed
from heurist.economy.amounts import parse_hue
from heurist.economy.book import MINT, DuplicateError, EconomyError, Ref, liquid, post, write_lock
from heurist.economy.config import Rules
from heurist.economy.handlers import PLANS, Context
from heurist.economy.inputs import base_fee_at
from heurist.economy.tables import Account, Bribe, Tx

if TYPE_CHECKING:
    from heurist.settings import Settings


@dataclass(frozen=True)
class Receipt:
    key: str
    type: str
    signer: str
    at_ms: int
    epoch: int
    effects: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key, "type": self.type, "signer": self.signer, "at_ms": self.at_ms, "epoch": self.epoch,
                **self.effects}


class Economy:
    """The token book on the ledger database (thread-safe: one session per call)."""

    def __init__(self, engine: Engine, rules: Rules, domain: EconomyDomain | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.engine, self.rules, self.clock = engine, rules, clock
        self.domain = domain or EconomyDomain()

    @classmethod
    def from_settings(cls, settings: Settings, engine: Engine) -> Economy:
        """The economy of ``settings``; its genesis (``HEURIST_ECONOMY_GENESIS``) is minted the first time an
        economy opens with it (once per address: opening again mints nothing)."""
        domain = EconomyDomain(name=settings.economy_domain_name, version=settings.economy_domain_version,
                               chain_id=settings.chain_id, verifying_contract=settings.verifying_contract)
        economy = cls(engine, Rules.of(settings), domain)
        if settings.economy_genesis:
            economy.genesis({address: parse_hue(str(amount), f"HEURIST_ECONOMY_GENESIS[{address}]")
                             for address, amount in settings.economy_genesis.items()})
        return economy

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    # ------------------------------------------------------------------------------------------------ writes

    def genesis(self, allocations: dict[str, int]) -> list[str]:
        """Mint each address's genesis HUE, once per address (a repeat is skipped); returns those minted now.

        All or nothing: one transaction, so an allocation that would pass the cap mints none of it. The cap for
        genesis is 950,000,000 HUE (the testnet's 50,000,000 is held back for the conversion), and after TGE
        genesis is closed: from then on only emission creates HUE."""
        owners = {checksummed(address, "genesis address"): amount for address, amount in allocations.items()}
        for owner, amount in owners.items():
            if amount <= 0:
                raise EconomyError(f"genesis: {owner}'s amount must be positive")
        minted: list[str] = []
        with session_scope(self.engine) as session:
            write_lock(session)
            if session.scalar(select(Tx.id).where(Tx.key == "tge")) is not None:
                new = [o for o in owners if session.scalar(select(Tx.id).where(Tx.key == f"genesis:{o}")) is None]
                if new:
                    raise EconomyError(f"genesis: TGE has run, so only emission creates HUE now; {new[0]} was not "
                                       "in the genesis")
                return []
            cap = self.rules.cap - self.rules.testnet_pool
            for owner, amount in owners.items():
                try:
                    with session.begin_nested():  # a concurrent twin's commit fails this address alone
                        self._post(session, key=f"genesis:{owner}", kind="genesis", actor="", cap=cap,
                                   legs=[(MINT, -amount), (liquid(owner), amount)], body={"amount": str(amount)})
                    minted.append(owner)
                except (DuplicateError, IntegrityError):
                    continue  # minted before, or by a concurrent twin that committed first
        return minted

    def apply(self, signed: Signed) -> Receipt:
        """Verify and post a signed action, or raise ``EconomyError`` changing nothing."""
        action = self.domain.verify(signed)
        signer = to_checksum_address(action.signer)
        key = f"action:{signer}:{action.nonce}"
        now = self.now_ms()
        try:
            with session_scope(self.engine) as session:
                write_lock(session)
                if session.scalar(select(Tx.id).where(Tx.key == key)) is not None:
                    raise DuplicateError(key)  # before planning: a replay is named as one, whatever it asks
                ctx = Context(session, self.rules, now, key, self.base_fee(session, now))
                plan = PLANS[type(action)](ctx, action)
                posting = self._post(session, key=key, kind=action.primary, actor=signer, legs=plan.legs,
                                     attrs=plan.attrs, body={"message": signed.message, **_strs(plan.effects)},
                                     signature=signed.signature, at_ms=now)
                self._side_effects(session, action, plan.effects, posting.tx.id)
        except (DuplicateError, IntegrityError):
            raise EconomyError(f"nonce: {action.nonce} was already used by {signer}; sign again with nonce "
                               f"{self.next_nonce(signer)}") from None
        return Receipt(key=key, type=action.primary, signer=signer, at_ms=now, epoch=self.rules.epoch_of(now),
                       effects=plan.effects)

    def _post(self, session: Session, *, at_ms: int | None = None, **kwargs: Any) -> Any:
        at = self.now_ms() if at_ms is None else at_ms
        kwargs.setdefault("cap", self.rules.cap)
        return post(session, at_ms=at, epoch=self.rules.epoch_of(at), **kwargs)

    @staticmethod
    def _side_effects(session: Session, action: Action, effects: dict[str, Any], tx_id: int) -> None:
        if isinstance(action, SetBribe):
            session.add(Bribe(node=effects["node"], bps=effects["bps"], effective_epoch=effects["effective_epoch"],
                              tx_id=tx_id))
        elif isinstance(action, FundKey):
            from heurist.credits.ledger import credit_in_session

            credit_in_session(session, action.key_id, effects["micro_units"], f"bought with HUE (tx {tx_id})",
                              f"fund:{tx_id}")

    # ------------------------------------------------------------------------------------------------ reads

    def base_fee(self, session: Session, at_ms: int | None = None) -> int:
        """The base fee per credit micro-unit in the epoch of ``at_ms`` (default now; an action passes the time it
        is dated, so price and date agree at an epoch boundary): ``heurist.economy.inputs.base_fee_at``."""
        return base_fee_at(session, self.rules, self.rules.epoch_of(self.now_ms() if at_ms is None else at_ms))

    def unit_price(self) -> dict[str, int]:
        with session_scope(self.engine) as session:
            base = self.base_fee(session)
        return {"base_fee": base * 1_000_000, "miner_fee": self.rules.miner_fee_per_micro * 1_000_000}

    def next_nonce(self, address: str) -> int:
        """One more than the highest nonce the address used (any unused nonce is accepted)."""
        signer = checksummed(address, "address")
        with session_scope(self.engine) as session:
            keys = session.scalars(select(Tx.key).where(Tx.actor == signer, Tx.key.like("action:%"))).all()
        return max((int(k.rsplit(":", 1)[1]) for k in keys), default=-1) + 1

    def bribe(self, node: str, epoch: int) -> int:
        """The node's bribe (bps) in effect in ``epoch``: its last setting effective by then, else 0."""
        with session_scope(self.engine) as session:
            bps = session.scalar(select(Bribe.bps).where(Bribe.node == checksummed(node, "node"),
                                                         Bribe.effective_epoch <= epoch)
                                 .order_by(Bribe.id.desc()).limit(1))
        return int(bps or 0)

    def minted(self) -> int:
        with session_scope(self.engine) as session:
            return -_balance(session, MINT)


def checksummed(address: str, field: str = "address") -> str:
    """``address`` in EIP-55 form, or an ``EconomyError`` naming ``field``."""
    try:
        return str(to_checksum_address(address.strip()))
    except (ValueError, TypeError, AttributeError):
        raise EconomyError(f"{field}: {address!r} is not an address (0x and 40 hex digits)") from None


def _balance(session: Session, ref: Ref) -> int:
    value = session.scalar(select(Account.balance).where(Account.kind == ref.kind, Account.token == ref.token,
                                                         Account.owner == ref.owner, Account.node == ref.node,
                                                         Account.ref == ref.ref))
    return int(value or 0)


def _strs(effects: dict[str, Any]) -> dict[str, Any]:
    return {k: str(v) if isinstance(v, int) else v for k, v in effects.items()}


__all__ = ["Economy", "Receipt"]
