"""Posting the book's epoch roots to the RewardsDistributor: every closed epoch not on chain yet, oldest first.

What is posted. For each epoch with payouts (the TGE conversion as epoch -1, once it ran): its Merkle root, the
sum of its leaves (``total``: the distributor never pays an epoch more), and its report's ``issued`` and
``burned`` (the TGE: issued = what it minted, burned = 0), so anyone can read an epoch's figures on chain. Before
posting, the root is rebuilt from the stored payouts (about 3 s per 100,000, ``heurist.economy.merkle``): a root
whose leaves are not the ones stored would leave every claim of the epoch unprovable.

Why it is safe to run again and again. The chain is the record of what was posted: an epoch whose root is on
chain is skipped, so a second run posts nothing, and a run cut short resumes where it stopped. Every epoch is
compared with the chain before anything is sent: one whose root on chain differs from the book's stops the run
loudly (another database, another distributor, or a book rewritten after posting; nothing here can tell which).
An epoch without payouts has no root and is skipped (the contract refuses an empty root).

Cost: one ``roots(epoch)`` eth_call per settled epoch on every run (6 ms each on a local ganache: a year of
hourly epochs, 8,760 calls, takes ~55 s; longer on a hosted node) and one transaction of ~95,000 gas per posted epoch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import select
from web3 import Web3

from heurist.db.engine import session_scope
from heurist.economy.merkle import MerkleTree
from heurist.economy.service import Economy
from heurist.economy.tables import Epoch, Payout, Tx
from heurist.identity import Wallet
from heurist.settlement.chain import SettlementError, event_at, node_errors, transact, tx_hex

TGE_EPOCH = -1  # as heurist.economy.tge, whose import pulls the ledger's point pools in
EMPTY_ROOT = "0x" + "00" * 32


@dataclass(frozen=True)
class BookEpoch:
    """What the book says of one settled epoch (the TGE's ``issued`` is its leaves' total: see ``leaves``)."""

    epoch: int
    root: str | None
    issued: int
    burned: int


@dataclass(frozen=True)
class Posted:
    epoch: int
    root: str
    total: int
    issued: int
    burned: int
    tx: str
    block: int
    gas_used: int


@dataclass
class Settlement:
    """What one run did: posted (in order), already on chain, and skipped with why."""

    posted: list[Posted] = field(default_factory=list)
    on_chain: list[int] = field(default_factory=list)
    skipped: list[tuple[int, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"posted": [{k: str(v) if k in ("total", "issued", "burned") else v for k, v in asdict(p).items()}
                           for p in self.posted],
                "already_on_chain": self.on_chain,
                "skipped": [{"epoch": e, "reason": why} for e, why in self.skipped]}


def book_epochs(economy: Economy, epoch: int | None = None) -> list[BookEpoch]:
    """The settled epochs of the book (all, or just ``epoch``), oldest first; the TGE is epoch -1 once it ran."""
    with session_scope(economy.engine) as session:
        query = select(Epoch.epoch, Epoch.merkle_root, Epoch.issued, Epoch.burned).order_by(Epoch.epoch)
        found = [BookEpoch(int(e), root, int(i), int(b)) for e, root, i, b in session.execute(
            query if epoch is None else query.where(Epoch.epoch == epoch))]
        if epoch is None or epoch == TGE_EPOCH:
            tge = session.scalar(select(Tx.body).where(Tx.key == "tge"))
            if tge is not None:
                found.insert(0, BookEpoch(TGE_EPOCH, tge.get("merkle_root"), 0, 0))
    return found


def leaves(economy: Economy, epoch: int) -> list[tuple[str, int]]:
    """An epoch's Merkle leaves, (address, amount), as the close stored them."""
    with session_scope(economy.engine) as session:
        return [(a, int(v)) for a, v in session.execute(select(Payout.address, Payout.amount)
                                                         .where(Payout.epoch == epoch))]


@node_errors("settle")
def settle(economy: Economy, w3: Web3, wallet: Wallet, distributor: Any, epoch: int | None = None) -> Settlement:
    """Post the roots of the book's settled epochs that are not on ``distributor`` yet (see the module docstring);
    with ``epoch``, just that one, and an error if it is not closed or already posted."""
    settler = distributor.functions.settler().call()
    if settler != wallet.address:
        raise SettlementError(f"settle: {wallet.address} is not the settlement key of {distributor.address} "
                              f"(that is {settler}): use that key's file, or have the owner call setSettler")
    epochs = book_epochs(economy, epoch)
    if epoch is not None and not epochs:
        raise SettlementError("settle: the TGE has not run, so epoch -1 has no root: run `heurist tge` first"
                              if epoch == TGE_EPOCH else
                              f"settle: epoch {epoch} is not closed yet: close it with `heurist epoch close {epoch}` "
                              "(epochs close in order, once they have ended), then settle")
    result, todo = Settlement(), []
    for book in epochs:  # compared with the chain before the first post: a disagreement stops the run, nothing sent
        if book.root is None:
            result.skipped.append((book.epoch, "no payouts, so no Merkle root"))
            continue
        chain_root = "0x" + bytes(distributor.functions.roots(book.epoch).call()).hex()
        if chain_root == EMPTY_ROOT:
            todo.append(book)
        elif chain_root != book.root:
            raise SettlementError(
                f"settle: THE CHAIN AND THE BOOK DISAGREE on epoch {book.epoch}: distributor {distributor.address} "
                f"holds root {chain_root}, the book {book.root}. Nothing was posted. Check that HEURIST_DATABASE_URL "
                "is this network's economy and HEURIST_SETTLEMENT_DISTRIBUTOR its distributor")
        elif epoch is not None:
            raise SettlementError(f"settle: epoch {book.epoch}'s root {book.root} is already posted "
                                  f"({posted_at(distributor, book.epoch)}); nothing to do")
        else:
            result.on_chain.append(book.epoch)
    for book in todo:
        paid = leaves(economy, book.epoch)
        rebuilt = MerkleTree.of(paid).root if paid else "none (no payouts stored)"
        if rebuilt != book.root:
            raise SettlementError(f"settle: epoch {book.epoch}'s stored payouts rebuild root {rebuilt}, not the "
                                  f"recorded {book.root}: the book is damaged; epoch {book.epoch} was not posted")
        total = sum(v for _, v in paid)
        issued = total if book.epoch == TGE_EPOCH else book.issued  # the TGE minted exactly what it paid
        receipt = transact(w3, wallet, distributor.functions.post(book.epoch, bytes.fromhex(rebuilt[2:]), total,
                                                                  issued, book.burned),
                           what=f"settle: post epoch {book.epoch}")
        result.posted.append(Posted(book.epoch, rebuilt, total, issued, book.burned, tx_hex(receipt),
                                    int(receipt["blockNumber"]), int(receipt["gasUsed"])))
    return result


def posted_at(distributor: Any, epoch: int) -> str:
    """Where ``epoch``'s root was posted, from its RootPosted event (``heurist.settlement.chain.event_at``)."""
    return event_at(distributor.events.RootPosted, {"epoch": epoch})
