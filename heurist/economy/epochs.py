"""Closing an epoch: rewards, fees and the Merkle root, deterministic and exactly once.

Epochs are the uptime's (``floor(t / epoch_s)``). Epoch N may be closed once it has ended plus
``economy_close_grace_s`` (credits still committing then count), and only after N-1: the base fee and the
emission budget carry from one to the next. Every input is read as of the epoch's end (``heurist.economy
.inputs``), so closing late gives the same result as closing on time, and closing twice changes nothing:
the epoch's row and its book key ``epoch:N`` are unique, and a second close returns the stored report.

The close posts one transaction dated at the epoch's end: ``mint`` and the fee pool pay each node's reward
as esHUE stake (compounded: the operator's share onto its own stake on its node, each staker's onto its
stake there). Then it stores the report and the Merkle leaves, one ``(address, amount)`` per address paid
(OpenZeppelin's ``StandardMerkleTree`` of ``["address", "uint256"]``, ``heurist.economy.merkle``).

Cost: one query per input and bulk writes, no per-row round trips (``heurist bench epoch``).
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from heurist.db.engine import session_scope
from heurist.economy.amounts import format_hue
from heurist.economy.book import FEES, MINT, DuplicateError, EconomyError, Ref, post, stake, write_lock
from heurist.economy.handlers import when
from heurist.economy.inputs import EpochInputs, read_inputs
from heurist.economy.merkle import MerkleTree
from heurist.economy.rewards import NodeSplit, emission, next_base_fee, split, split_node, weight
from heurist.economy.service import Economy, checksummed
from heurist.economy.tables import Epoch, Payout, Token, Tx


def close_epoch(economy: Economy, epoch: int) -> dict[str, Any]:
    """Close ``epoch`` (or return its report if it is closed): see the module docstring."""
    end = economy.rules.epoch_bounds(epoch)[1]
    with session_scope(economy.engine) as session:
        write_lock(session)
        closed = session.get(Epoch, epoch)
        if closed is not None:
            return closed.report
        if economy.now_ms() < end + economy.rules.close_grace_s * 1000:
            raise EconomyError(f"epoch: {epoch} ends at {when(end)}; it can be closed "
                               f"{economy.rules.close_grace_s:g} s later")
        last, first = _last_closed(session), _first_epoch(session, economy)
        expected = last + 1 if last is not None else first
        if expected is None:
            raise EconomyError("epoch: the book is empty (no genesis yet), so there is nothing to close")
        if epoch < expected:
            raise EconomyError(f"epoch: {epoch} is before the book's first epoch, {expected}: nothing happened in it")
        if epoch > expected:
            raise EconomyError(f"epoch: close {expected} first (epochs close in order)")
        inputs = read_inputs(session, economy.rules, epoch)
        try:
            with session.begin_nested():
                return _settle(session, economy, inputs)
        except (DuplicateError, IntegrityError):
            pass  # another close of this epoch committed first: return what it stored
    found = epoch_report(economy, epoch)
    if found is None:
        raise EconomyError(f"epoch: {epoch} could not be closed; try again")
    return found


def close_ended(economy: Economy, progress: Any = None) -> list[dict[str, Any]]:
    """Close every epoch that has ended (plus grace) and is still open, oldest first."""
    with session_scope(economy.engine) as session:
        last, first = _last_closed(session), _first_epoch(session, economy)
    if first is None and last is None:
        return []
    begin = last + 1 if last is not None else first
    assert begin is not None
    now = economy.now_ms() - int(economy.rules.close_grace_s * 1000)
    final = economy.rules.epoch_of(now) - 1
    reports = []
    for n in range(begin, final + 1):
        reports.append(close_epoch(economy, n))
        if progress is not None:
            progress(n, final)
    return reports


def epoch_report(economy: Economy, epoch: int) -> dict[str, Any] | None:
    with session_scope(economy.engine) as session:
        row = session.get(Epoch, epoch)
        return None if row is None else row.report


def proof(economy: Economy, address: str, epoch: int) -> dict[str, Any]:
    """The Merkle proof of ``address``'s payout in ``epoch`` (-1: TGE), as ``MerkleProof.verify`` takes it."""
    owner = checksummed(address, "address")
    with session_scope(economy.engine) as session:
        closed = session.get(Epoch, epoch) if epoch >= 0 else None
        if epoch >= 0 and closed is None:
            raise EconomyError(f"epoch: {epoch} is not closed (`heurist epoch close`)")
        stored = closed.merkle_root if closed is not None else session.scalar(
            select(Tx.body["merkle_root"].as_string()).where(Tx.key == "tge"))
        leaves = [(a, int(v)) for a, v in session.execute(select(Payout.address, Payout.amount)
                                                           .where(Payout.epoch == epoch))]
    amounts = dict(leaves)
    if owner not in amounts:
        raise EconomyError(f"address: {owner} was paid nothing in epoch {epoch}")
    tree = MerkleTree.of(leaves)
    if tree.root != stored:  # the leaves must be the ones the close committed to
        raise EconomyError(f"epoch: the stored payouts of {epoch} rebuild root {tree.root}, not the recorded {stored}")
    return {"address": owner, "amount": str(amounts[owner]), "proof": tree.proof(owner, amounts[owner]),
            "root": tree.root, "epoch": epoch}


def _settle(session: Session, economy: Economy, inputs: EpochInputs) -> dict[str, Any]:
    rules, epoch = economy.rules, inputs.epoch
    minted_now = emission(inputs.remaining, rules.epoch_s, rules.emission_tau_s)
    weights = {node: weight(inputs.points.get(node, 0), min(inputs.slots.get(node, 0), rules.slots_per_epoch),
                            inputs.avg_stake(node), rules.activation) for node in inputs.nodes()}
    rewards, _ = split(minted_now + inputs.fees, weights)
    splits = {node: split_node(r, inputs.bribes.get(node, 0), inputs.stake_times[node], rules.eshue_multiplier_bps)
              for node, r in rewards.items()}
    paid = sum(rewards.values())
    from_fees = min(inputs.fees, paid)
    issued = paid - from_fees
    legs: list[tuple[Ref, int]] = [(MINT, -issued), (FEES, -from_fees)]
    payouts: dict[str, int] = defaultdict(int)
    for node, s in splits.items():
        legs.append((stake(node, node, Token.ESHUE), s.to_operator))
        payouts[node] += s.to_operator
        for (owner, _token), amount in s.to_stakers.items():
            legs.append((stake(owner, node, Token.ESHUE), amount))
            payouts[owner] += amount
    leaves = [(a, v) for a, v in sorted(payouts.items()) if v > 0]
    root = MerkleTree.of(leaves).root if leaves else None
    next_fee = next_base_fee(inputs.base_fee, inputs.micro_units, rules.target_micro_units)
    report = _report(inputs, weights, rewards, splits, issued=issued, next_fee=next_fee, root=root, leaves=leaves)
    post(session, key=f"epoch:{epoch}", kind="epoch", actor="", at_ms=inputs.end_ms, epoch=epoch,
         legs=[(ref, amount) for ref, amount in legs if amount], body={"epoch": epoch, "merkle_root": root},
         cap=rules.cap)
    session.add(Epoch(epoch=epoch, start_ms=inputs.start_ms, end_ms=inputs.end_ms, closed_at=time.time(),
                      base_fee_per_micro=inputs.base_fee, next_base_fee_per_micro=next_fee,
                      micro_units=inputs.micro_units, issued=issued, burned=inputs.burned, merkle_root=root,
                      report=report))
    if leaves:
        session.execute(insert(Payout), [{"epoch": epoch, "address": a, "amount": v} for a, v in leaves])
    return report


def _report(inputs: EpochInputs, weights: dict[str, int], rewards: dict[str, int], splits: dict[str, NodeSplit],
            *, issued: int, next_fee: int, root: str | None, leaves: list[tuple[str, int]]) -> dict[str, Any]:
    nodes = [{"node": node, "points": inputs.points.get(node, 0) / 1_000_000, "uptime_slots": inputs.slots.get(node, 0),
              "stake": str(inputs.avg_stake(node)), "active": weights[node] > 0 or inputs.is_active(node),
              "weight": str(weights[node]), "reward": str(rewards.get(node, 0)),
              "bribe_bps": inputs.bribes.get(node, 0),
              "to_stakers": str(sum(splits[node].to_stakers.values())) if node in splits else "0",
              "to_operator": str(splits[node].to_operator) if node in splits else "0"}
             for node in sorted(inputs.nodes())]
    stakers = [{"address": owner, "node": node, "token": token, "reward": str(amount)}
               for node, s in sorted(splits.items()) for (owner, token), amount in sorted(s.to_stakers.items())]
    return {"epoch": inputs.epoch, "start": when(inputs.start_ms), "end": when(inputs.end_ms), "issued": str(issued),
            "burned": str(inputs.burned), "net_issuance": str(issued - inputs.burned),
            "deflationary": inputs.burned > issued, "fees_to_miners": str(min(inputs.fees, sum(rewards.values()))),
            "base_fee": str(inputs.base_fee * 1_000_000), "next_base_fee": str(next_fee * 1_000_000),
            "units": inputs.micro_units / 1_000_000, "merkle_root": root, "nodes": nodes, "stakers": stakers,
            "payouts": [{"address": a, "amount": str(v)} for a, v in leaves],
            "summary": f"issued {format_hue(issued)} HUE, burned {format_hue(inputs.burned)} HUE"}


def _last_closed(session: Session) -> int | None:
    return session.scalar(select(Epoch.epoch).order_by(Epoch.epoch.desc()).limit(1))


def _first_epoch(session: Session, economy: Economy) -> int | None:
    first = session.scalar(select(func.min(Tx.at_ms)))
    return None if first is None else economy.rules.epoch_of(int(first))
