"""The credit ledger: keys, balances, and the charge/refund/settle cycle of a job.

Every write starts with an UPDATE of the key's row. That statement is the lock: PostgreSQL holds the row
until commit and re-checks a conditional UPDATE's WHERE after waiting, and SQLite takes its one write
lock (waiting out ``busy_timeout``) before anything is read. So "check the balance, then charge" is one
atomic step on both databases, and two requests racing for the last credits cannot both win.
"""

from __future__ import annotations

import hmac
import time
import uuid
from dataclasses import dataclass

from sqlalchemy import Engine, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from heurist.credits.keys import display_prefix, hash_key, new_key
from heurist.credits.tables import ApiKey, CreditEntry, CreditEntryKind
from heurist.db.engine import session_scope
from heurist.errors import HeuristError
from heurist.points import from_micro, to_micro


class InsufficientCreditsError(HeuristError):
    """A request would overdraw its key: refused (HTTP 402) before any job is sent, nothing charged."""

    def __init__(self, key_id: int, balance: float, price: float) -> None:
        super().__init__(f"API key {key_id} has {balance:.6f} units, this request costs {price:.6f}: "
                         f"top up with `heurist keys topup {key_id} UNITS`")
        self.key_id, self.balance, self.price = key_id, balance, price


class UnknownKeyError(HeuristError):
    """No API key has this id."""


class DisabledKeyError(HeuristError):
    """The key exists but was disabled: it may not spend."""


@dataclass(frozen=True)
class Reservation:
    """Credits taken from a key for one job, before the job is sent."""

    key_id: int
    job_id: str
    amount_micro: int

    @property
    def units(self) -> float:
        return from_micro(self.amount_micro)


def _add_to_balance(session: Session, key_id: int, delta_micro: int) -> int:
    """Move a balance (0 just locks the row); returns rows touched."""
    result = session.execute(update(ApiKey).where(ApiKey.id == key_id)
                             .values(balance_micro=ApiKey.balance_micro + delta_micro))
    return int(result.rowcount)  # type: ignore[attr-defined]


def _entry(key_id: int, job_id: str | None, kind: CreditEntryKind, amount_micro: int, note: str,
           idempotency_key: str) -> CreditEntry:
    return CreditEntry(idempotency_key=idempotency_key, api_key_id=key_id, job_id=job_id, kind=kind,
                       amount_micro=amount_micro, note=note, created_at=time.time())


def credit_in_session(session: Session, key_id: int, amount_micro: int, note: str, idempotency_key: str) -> None:
    """Add ``amount_micro`` to a key inside the caller's transaction (HUE bought it: ``heurist.economy``), so the
    payment and the credit commit or roll back together."""
    if not _add_to_balance(session, key_id, amount_micro):
        raise UnknownKeyError(f"no API key {key_id} (see `heurist keys list`)")
    session.add(_entry(key_id, None, CreditEntryKind.TOPUP, amount_micro, note, idempotency_key))


class CreditLedger:
    """API keys and their balances in the ledger database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def create_key(self, name: str, initial_units: float = 0.0) -> tuple[int, str]:
        """A new key and its plaintext: the only time the plaintext exists outside its owner's hands."""
        plaintext = new_key()
        with session_scope(self.engine) as session:
            key = ApiKey(name=name, key_sha256=hash_key(plaintext), prefix=display_prefix(plaintext),
                         balance_micro=0, created_at=time.time(), disabled=False)
            session.add(key)
            session.flush()
            key_id = key.id
        if initial_units > 0:
            self.topup(key_id, initial_units, "initial credits")
        return key_id, plaintext

    def authenticate(self, plaintext: str) -> ApiKey | None:
        """The enabled key with this plaintext, or None. Lookup is by hash, so timing reveals nothing of
        the stored value; the final compare is constant-time as well."""
        digest = hash_key(plaintext)
        with session_scope(self.engine) as session:
            key = session.scalar(select(ApiKey).where(ApiKey.key_sha256 == digest))
        if key is None or key.disabled or not hmac.compare_digest(key.key_sha256, digest):
            return None
        return key

    def list_keys(self) -> list[ApiKey]:
        with session_scope(self.engine) as session:
            return list(session.scalars(select(ApiKey).order_by(ApiKey.id)))

    def set_disabled(self, key_id: int, disabled: bool) -> None:
        with session_scope(self.engine) as session:
            if not session.execute(update(ApiKey).where(ApiKey.id == key_id)
                                   .values(disabled=disabled)).rowcount:  # type: ignore[attr-defined]
                raise UnknownKeyError(f"no API key {key_id} (see `heurist keys list`)")

    def topup(self, key_id: int, units: float, note: str = "", idempotency_key: str | None = None) -> float:
        """Add credits; returns the new balance. A repeated ``idempotency_key`` adds nothing."""
        amount = to_micro(units)
        if amount <= 0:
            raise HeuristError(f"a top-up must be positive, got {units} units")
        ikey = idempotency_key or f"topup:{uuid.uuid4().hex}"
        try:
            with session_scope(self.engine) as session:
                if not _add_to_balance(session, key_id, amount):
                    raise UnknownKeyError(f"no API key {key_id} (see `heurist keys list`)")
                session.add(_entry(key_id, None, CreditEntryKind.TOPUP, amount, note, ikey))
        except IntegrityError:
            pass  # this top-up was already recorded; the rollback undid the balance change
        return self.balance(key_id)

    def balance(self, key_id: int) -> float:
        with session_scope(self.engine) as session:
            micro = session.scalar(select(ApiKey.balance_micro).where(ApiKey.id == key_id))
        if micro is None:
            raise UnknownKeyError(f"no API key {key_id} (see `heurist keys list`)")
        return from_micro(micro)

    def entries_total(self, key_id: int) -> float:
        """The sum of a key's history: always equal to ``balance`` (the check the tests make)."""
        with session_scope(self.engine) as session:
            total = session.scalar(select(func.coalesce(func.sum(CreditEntry.amount_micro), 0))
                                   .where(CreditEntry.api_key_id == key_id))
        return from_micro(int(total or 0))

    def reserve(self, key_id: int, job_id: str, units: float) -> Reservation:
        """Charge a job's price before it is sent, or raise ``InsufficientCreditsError`` charging nothing.
        Reserving the same job twice charges once."""
        amount = to_micro(units)
        existing = self._find(job_id)
        if existing is not None:
            return existing
        try:
            with session_scope(self.engine) as session:
                self._debit(session, key_id, amount)
                session.add(_entry(key_id, job_id, CreditEntryKind.CHARGE, -amount, "", f"charge:{job_id}"))
        except IntegrityError:
            pass  # already reserved: the rollback undid this second charge
        return self._reservation(job_id)

    def charge(self, key_id: int, amount_micro: int, note: str, idempotency_key: str) -> bool:
        """Take ``amount_micro`` for work that is not a job (search ingestion), or raise
        ``InsufficientCreditsError`` taking nothing. False: ``idempotency_key`` was charged already."""
        try:
            with session_scope(self.engine) as session:
                self._debit(session, key_id, amount_micro)
                session.add(_entry(key_id, None, CreditEntryKind.CHARGE, -amount_micro, note, idempotency_key))
        except IntegrityError:
            return False  # charged before: the rollback undid this second charge
        return True

    def give_back(self, key_id: int, amount_micro: int, note: str, idempotency_key: str) -> None:
        """Return a ``charge`` whose work failed, once per ``idempotency_key``."""
        try:
            with session_scope(self.engine) as session:
                _add_to_balance(session, key_id, amount_micro)
                session.add(_entry(key_id, None, CreditEntryKind.REFUND, amount_micro, note, idempotency_key))
        except IntegrityError:
            pass

    def _debit(self, session: Session, key_id: int, amount: int) -> None:
        """Take ``amount`` from an enabled key that holds it, in one conditional UPDATE, or raise."""
        taken = session.execute(update(ApiKey)
                                .where(ApiKey.id == key_id, ApiKey.balance_micro >= amount, ApiKey.disabled.is_(False))
                                .values(balance_micro=ApiKey.balance_micro - amount))
        if not taken.rowcount:  # type: ignore[attr-defined]
            self._refuse(session, key_id, amount)

    @staticmethod
    def _refuse(session: Session, key_id: int, amount: int) -> None:
        key = session.get(ApiKey, key_id)
        if key is None:
            raise UnknownKeyError(f"no API key {key_id} (see `heurist keys list`)")
        if key.disabled:
            raise DisabledKeyError(f"API key {key_id} is disabled")
        raise InsufficientCreditsError(key_id, from_micro(key.balance_micro), from_micro(amount))

    def charged(self, job_id: str) -> float:
        """What the job costs its key now: the charge less everything given back."""
        with session_scope(self.engine) as session:
            total = session.scalar(select(func.sum(CreditEntry.amount_micro)).where(CreditEntry.job_id == job_id))
        return from_micro(-int(total or 0))

    def reservation(self, job_id: str) -> Reservation | None:
        """The job's charge (which key paid, how much), or None for a job no key paid for."""
        return self._find(job_id)

    def _find(self, job_id: str) -> Reservation | None:
        with session_scope(self.engine) as session:
            charge = session.scalar(select(CreditEntry).where(CreditEntry.idempotency_key == f"charge:{job_id}"))
        return None if charge is None else Reservation(charge.api_key_id, job_id, -charge.amount_micro)

    def _reservation(self, job_id: str) -> Reservation:
        found = self._find(job_id)
        if found is None:
            raise HeuristError(f"job {job_id} has no credit reservation")
        return found

    def refund(self, job_id: str) -> float:
        """Give back what a failed job still holds (its charge, less any settle refund). Once per job:
        later calls refund nothing. Returns the units refunded."""
        return self._give_back(job_id, f"refund:{job_id}", None)

    def settle(self, job_id: str, actual_units: float) -> float:
        """A text job finished: refund the reservation's unused part, once. A job never costs more than
        its reservation. Returns the units refunded."""
        return self._give_back(job_id, f"settle:{job_id}", to_micro(actual_units))

    def _give_back(self, job_id: str, ikey: str, keep_micro: int | None) -> float:
        reservation = self._reservation(job_id)
        try:
            with session_scope(self.engine) as session:
                _add_to_balance(session, reservation.key_id, 0)  # lock the key: refunds take turns
                if session.scalar(select(CreditEntry.id).where(CreditEntry.idempotency_key == ikey)):
                    return 0.0
                held = -int(session.scalar(select(func.sum(CreditEntry.amount_micro))
                                           .where(CreditEntry.job_id == job_id)) or 0)
                amount = max(0, held if keep_micro is None else min(held, reservation.amount_micro - keep_micro))
                if amount == 0 and keep_micro is None:
                    return 0.0  # nothing left to give back (a settle keeps its zero entry: settled once)
                _add_to_balance(session, reservation.key_id, amount)
                session.add(_entry(reservation.key_id, job_id, CreditEntryKind.REFUND, amount, ikey.split(":")[0],
                                   ikey))
        except IntegrityError:
            return 0.0  # a concurrent call gave it back first
        return from_micro(amount)
