"""One miner's judgements, one at a time: lock its ``miners`` row before reading what a verdict is decided from.

The ledger runs up to ``HEURIST_LEDGER_CONCURRENCY`` (128) handlers per process, and may run as 2 processes;
auditors of several models judge one miner's jobs at the same time. A handler that reads a miner's record and then
writes from what it read (is there an earlier registration? has it reached the ban threshold? may its escrow be
released?) is a check-then-act: two of them side by side each miss the other's uncommitted row. Measured on
PostgreSQL: 4 miners with 3 failed audits each, all 12 recorded at once, and 3 of the 4 were not banned; a fifth
pass and a failure judged together released the held balance and took the failed job's credit from escrow too
(held: -8 points). Where a unique key cannot say it (a count reaching a threshold), this lock does. A credit
holds its miner's row shared (``share_miners``) while it decides between held and available: 7 or 8 of 8 credits
read as a new miner's, then stored after its release, stayed held for good (the release happens once).

PostgreSQL locks the row (``SELECT ... FOR NO KEY UPDATE``) until the transaction ends; other miners' handlers
never wait. SQLite takes its one write lock first, with a no-op UPDATE: Python's sqlite3 begins the transaction only at
the first write, so reads made before it see a snapshot another writer may change before this one writes.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from heurist.db.engine import sqlite_write_lock
from heurist.ledger.tables import Miner


def lock_miner(session: Session, address: str) -> Miner | None:
    """The miner's row (None if it sent no hello), locked until ``session``'s transaction ends; call it before
    reading anything the transaction's writes depend on. On PostgreSQL ``FOR NO KEY UPDATE``: the foreign-key
    checks of the miner's credits (``KEY SHARE``) do not wait for it; its hellos and heartbeats, which update the
    row, and its other judgements do (for milliseconds)."""
    if sqlite_write_lock(session, Miner.address):
        return session.get(Miner, address)
    return session.scalar(select(Miner).where(Miner.address == address).with_for_update(key_share=True))


def share_miners(session: Session, addresses: Iterable[str]) -> None:
    """Hold these miners' rows against ``lock_miner`` until the transaction ends (credits of one miner still run
    side by side): PostgreSQL ``FOR SHARE``, taken in address order so two ledger processes never deadlock. On
    SQLite the caller has already written, so it holds the one write lock."""
    ordered = sorted(set(addresses))
    if ordered and session.get_bind().dialect.name != "sqlite":
        session.execute(select(Miner.address).where(Miner.address.in_(ordered)).order_by(Miner.address)
                        .with_for_update(read=True))


__all__ = ["lock_miner", "share_miners"]
