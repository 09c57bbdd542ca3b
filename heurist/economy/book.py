"""Posting to the economy book: one balanced transaction per change, exactly once, never overdrawn.

``post`` does, in the caller's database transaction:

1. insert the transaction row: its unique key refuses a second posting (a replayed nonce, a second genesis,
   a second epoch close) before anything moves;
2. find or create every account the legs touch (an upsert, so two first deposits cannot collide);
3. lock them in id order (``SELECT … FOR UPDATE`` on PostgreSQL; SQLite already holds its one write lock
   from step 1), so two spends of one balance take turns and the second sees what the first left;
4. refuse if any account but ``mint`` would go below zero, or minting would pass the cap;
5. write the new cached balances and the legs.

Any refusal raises and the caller's transaction rolls back: a failed action changes nothing. Legs must sum
to zero (HUE and esHUE are one supply; vesting converts one into the other 1:1).
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select, tuple_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from heurist.db.engine import sqlite_write_lock
from heurist.economy.amounts import format_hue
from heurist.economy.config import CAP
from heurist.economy.tables import SYSTEM, Account, AccountKind, Leg, Token, Tx
from heurist.errors import HeuristError


class EconomyError(HeuristError):
    """An economy action was refused; nothing changed."""


class OverdrawError(EconomyError):
    pass


class CapError(EconomyError):
    pass


class DuplicateError(EconomyError):
    """This transaction's idempotency key was posted before."""


@dataclass(frozen=True)
class Ref:
    """Names an account; ``extra`` sets the attributes a new LOCK or VEST account is created with."""

    kind: AccountKind
    token: Token
    owner: str = SYSTEM
    node: str = ""
    ref: str = ""

    def key(self) -> tuple[str, str, str, str, str]:
        return self.kind.value, self.token.value, self.owner, self.node, self.ref


CHUNK = 2_000  # accounts per statement: 2,000 x 11 parameters stays under 32,766 (SQLite) and 65,535
OPENING = {"unlock_at_ms": None, "vest_total": None, "vest_start_ms": None, "vest_end_ms": None}
MINT = Ref(AccountKind.MINT, Token.HUE)
BURN = Ref(AccountKind.BURN, Token.HUE)
FEES = Ref(AccountKind.FEES, Token.HUE)


def liquid(owner: str, token: Token = Token.HUE) -> Ref:
    return Ref(AccountKind.LIQUID, token, owner)


def stake(owner: str, node: str, token: Token) -> Ref:
    return Ref(AccountKind.STAKE, token, owner, node)


@dataclass(frozen=True)
class Posting:
    """What ``post`` wrote: the transaction and each account's balance after it."""

    tx: Tx
    balances: dict[Ref, int]


def write_lock(session: Session) -> None:
    """Take SQLite's one write lock before the transaction reads anything. A WAL reader that writes later fails at
    once with "database is locked" if another writer committed meanwhile (no busy wait: it would read a stale
    snapshot), so an action that checks balances, or a close that reads its inputs, must write first. A no-op
    UPDATE does it (``heurist.db.engine.sqlite_write_lock``); PostgreSQL needs nothing here (``post`` locks the rows
    it reads)."""
    sqlite_write_lock(session, Account.ref)


def post(session: Session, *, key: str, kind: str, actor: str, at_ms: int, epoch: int,
         legs: list[tuple[Ref, int]], body: dict[str, Any], signature: str | None = None,
         attrs: dict[Ref, dict[str, Any]] | None = None, cap: int = CAP) -> Posting:
    """Post one balanced transaction (see the module docstring); raise ``EconomyError`` to refuse it."""
    if sum(amount for _, amount in legs) != 0:
        raise ValueError(f"transaction {key} does not balance: {legs}")
    tx = Tx(key=key, kind=kind, actor=actor, at_ms=at_ms, epoch=epoch, body=body, signature=signature,
            recorded_at=time.time())
    if session.scalar(select(Tx.id).where(Tx.key == key)) is not None:
        raise DuplicateError(f"{key} was already recorded")
    session.add(tx)
    session.flush()  # a concurrent twin fails here on the unique key
    deltas: dict[Ref, int] = defaultdict(int)
    for ref, amount in legs:
        deltas[ref] += amount
    accounts = _accounts(session, list(deltas), attrs or {})
    after = {ref: accounts[ref].balance + delta for ref, delta in deltas.items()}
    for ref, balance in after.items():
        if ref.kind is not AccountKind.MINT and balance < 0:
            raise OverdrawError(f"amount: {_describe(ref)} holds {format_hue(accounts[ref].balance)} {ref.token}, "
                                f"{format_hue(-deltas[ref])} needed")
    if MINT in after and -after[MINT] > cap:
        raise CapError(f"minting {format_hue(-deltas[MINT])} HUE would pass the cap of {format_hue(cap)} HUE "
                       f"({format_hue(-accounts[MINT].balance)} minted so far)")
    for ref, balance in after.items():
        accounts[ref].balance = balance
    session.flush()
    rows = [{"tx_id": tx.id, "account_id": accounts[ref].id, "amount": amount, "at_ms": at_ms}
            for ref, amount in legs if amount]
    if rows:
        session.execute(insert(Leg), rows)
    return Posting(tx=tx, balances=after)


def _accounts(session: Session, refs: list[Ref], attrs: dict[Ref, dict[str, Any]]) -> dict[Ref, Account]:
    """The accounts of ``refs``, created when missing, locked in the order of their keys (in chunks: an epoch close
    touches 100,000 accounts, past both databases' limits on parameters in one statement). One order for every
    transaction, across chunks and within them, so two posts never wait on each other in a cycle."""
    found: dict[tuple[str, str, str, str, str], Account] = {}
    refs = sorted(set(refs), key=Ref.key)  # one global lock order (by key) across chunks: no deadlock between posts
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    # One statement, compiled once and run with a list of rows (executemany): a multi-row VALUES is compiled
    # afresh for every chunk, about 1 ms per account in SQLAlchemy (100 s to close an epoch of 100,000 stakers).
    upsert = insert(Account).on_conflict_do_nothing(index_elements=["kind", "token", "owner", "node", "ref"])
    for i in range(0, len(refs), CHUNK):
        chunk = refs[i:i + CHUNK]
        rows = [{"kind": r.kind.value, "token": r.token.value, "owner": r.owner, "node": r.node, "ref": r.ref,
                 "balance": 0, **OPENING, **attrs.get(r, {})} for r in chunk]
        session.execute(upsert, rows)
    for i in range(0, len(refs), CHUNK):
        keys = [r.key() for r in refs[i:i + CHUNK]]
        # ``owner IN`` is implied by the key; it lets both databases find the rows by the owner index (SQLite
        # answers a 5-column row-value IN alone by scanning the whole table, once per chunk: quadratic).
        query = (select(Account).where(Account.owner.in_(sorted({key[2] for key in keys})),
                                       tuple_(Account.kind, Account.token, Account.owner, Account.node, Account.ref)
                                       .in_(keys)))
        columns = (Account.kind, Account.token, Account.owner, Account.node, Account.ref)
        if session.get_bind().dialect.name == "postgresql":  # byte order, as Python sorted the chunks (ASCII keys)
            query = query.order_by(*(c.collate("C") for c in columns)).with_for_update()
        else:
            query = query.order_by(*columns)
        query = query.execution_options(populate_existing=True)  # re-read under the lock, never a cached balance
        found.update({(a.kind.value, a.token.value, a.owner, a.node, a.ref): a for a in session.scalars(query)})
    return {r: found[r.key()] for r in refs}


def _describe(ref: Ref) -> str:
    where = {AccountKind.LIQUID: f"{ref.owner}'s balance", AccountKind.STAKE: f"{ref.owner}'s stake on {ref.node}",
             AccountKind.LOCK: f"{ref.owner}'s locked HUE", AccountKind.VEST: f"{ref.owner}'s vesting esHUE"}
    return where.get(ref.kind, f"the {ref.kind.value} account")
