"""The incentivized testnet's conversion at TGE: 50,000,000 HUE (5 % of the cap) from points, exactly once.

The pool is split between the Waifu pool (image points) and the Llama pool (text points) by
``HEURIST_ECONOMY_WAIFU_BPS`` (default 5,000: half each), then shared pro rata by each miner's credited
points in that pool (``heurist.ledger.pools``: net of clawbacks; points still in escrow do not count, and a
miner whose net is not positive gets nothing), credited before the book's first epoch: points from then on earn
epoch emission instead, and are not converted twice. Paid as liquid HUE to the miner's address.

Remainders: every share is a floor, and a pool with no points pays nothing. What is not paid is not minted
and goes back into the emission budget (``heurist.economy.rewards``: after TGE the budget no longer holds
the testnet's 50 M back). So TGE mints at most 50 M and never creates or loses a base unit.

Once: the book's key ``tge`` is unique; a second run refuses. The payouts are also Merkle leaves
(``economy_payouts`` epoch -1), so a chain can settle them like an epoch.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from heurist.db.engine import session_scope
from heurist.economy.book import MINT, DuplicateError, EconomyError, Ref, liquid, post, write_lock
from heurist.economy.config import BPS
from heurist.economy.merkle import MerkleTree
from heurist.economy.rewards import split
from heurist.economy.service import Economy
from heurist.economy.tables import Payout, Tx
from heurist.ledger.pools import points_by_pool

TGE_EPOCH = -1  # the payouts table's epoch for the TGE leaves


def _cutoff(session: Session, economy: Economy, now: int) -> int:
    """Testnet points end where the book's first epoch starts: from there on every epoch's close pays emission for
    its points, and converting them again at TGE would pay them twice. An empty book: every point so far."""
    first = session.scalar(select(func.min(Tx.at_ms)))
    return now if first is None else min(now, economy.rules.epoch_bounds(economy.rules.epoch_of(int(first)))[0])


def run_tge(economy: Economy) -> dict[str, Any]:
    """Convert testnet points into HUE (see the module docstring); raise if TGE already ran."""
    rules, now = economy.rules, economy.now_ms()
    waifu_pool = rules.testnet_pool * rules.waifu_bps // BPS
    llama_pool = rules.testnet_pool - waifu_pool
    try:
        with session_scope(economy.engine) as session:
            write_lock(session)
            pools = points_by_pool(session, until=_cutoff(session, economy, now) / 1000)
            waifu, _ = split(waifu_pool, {a: p.waifu_micro for a, p in pools.items() if p.waifu_micro > 0})
            llama, _ = split(llama_pool, {a: p.llama_micro for a, p in pools.items() if p.llama_micro > 0})
            paid = {a: waifu.get(a, 0) + llama.get(a, 0) for a in sorted(set(waifu) | set(llama))}
            paid = {a: v for a, v in paid.items() if v > 0}
            minted = sum(paid.values())
            legs: list[tuple[Ref, int]] = [(MINT, -minted), *((liquid(a), v) for a, v in paid.items())]
            leaves = list(paid.items())
            root = MerkleTree.of(leaves).root if leaves else None
            post(session, key="tge", kind="tge", actor="", at_ms=now, epoch=rules.epoch_of(now),
                 legs=[(r, v) for r, v in legs if v], body={"merkle_root": root, "waifu_bps": rules.waifu_bps},
                 cap=rules.cap)
            if leaves:
                session.execute(insert(Payout), [{"epoch": TGE_EPOCH, "address": a, "amount": v} for a, v in leaves])
    except (DuplicateError, IntegrityError):  # IntegrityError: a concurrent TGE committed first
        raise EconomyError("tge: the testnet conversion already ran (it runs exactly once)") from None
    return {"minted": str(minted), "waifu_pool": str(waifu_pool), "llama_pool": str(llama_pool),
            "waifu_paid": str(sum(waifu.values())), "llama_paid": str(sum(llama.values())),
            "unminted": str(rules.testnet_pool - minted), "merkle_root": root,
            "payouts": [{"address": a, "amount": str(v), "waifu": str(waifu.get(a, 0)), "llama": str(llama.get(a, 0))}
                        for a, v in leaves]}
