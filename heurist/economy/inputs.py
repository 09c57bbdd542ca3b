"""Everything an epoch close reads, as of the epoch's end, one query per input (no per-row round trips).

As of the end: legs dated before ``end_ms`` (an action's date is when the economy recorded it; a close's
own legs are dated at its epoch's end, so they count from the next epoch on), points credited in
``[start, end)``, heartbeat slots of the epoch, the bribes in effect for it. So the same book closes to the
same report whenever the close runs.

Amounts are summed in Python: ``Amount`` is text on SQLite, and one pass over the rows is linear
(``heurist bench epoch`` measures 100,000 positions).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from heurist.economy.config import Rules
from heurist.economy.rewards import next_base_fee, stake_time
from heurist.economy.tables import Account, AccountKind, Bribe, Epoch, Leg, Token, Tx
from heurist.ledger.tables import CREDITED_KINDS, MinerUptime, PointsEntry

FUND_KIND = "FundKey"


@dataclass
class EpochInputs:
    epoch: int
    start_ms: int
    end_ms: int
    activation: int
    # node -> (staker, token) -> Σ amount x ms staked within the epoch
    stake_times: dict[str, dict[tuple[str, str], int]] = field(default_factory=dict)
    points: dict[str, int] = field(default_factory=dict)  # credited micro-points in the epoch, net
    slots: dict[str, int] = field(default_factory=dict)  # heartbeat slots heard
    bribes: dict[str, int] = field(default_factory=dict)  # bps in effect
    fees: int = 0  # the miners' fee pool at the end
    burned: int = 0  # base fees burned during the epoch
    micro_units: int = 0  # credit micro-units bought during the epoch
    base_fee: int = 0  # per micro-unit, in effect during the epoch
    remaining: int = 0  # emission budget left: cap - minted (- the testnet pool before TGE)

    def nodes(self) -> set[str]:
        return set(self.stake_times) | {n for n, p in self.points.items() if p > 0}

    def avg_stake(self, node: str) -> int:
        return sum(self.stake_times.get(node, {}).values()) // (self.end_ms - self.start_ms)

    def is_active(self, node: str) -> bool:
        return self.avg_stake(node) >= self.activation


def read_inputs(session: Session, rules: Rules, epoch: int) -> EpochInputs:
    start, end = rules.epoch_bounds(epoch)
    inputs = EpochInputs(epoch=epoch, start_ms=start, end_ms=end, activation=rules.activation)
    _stake(session, inputs)
    _points(session, inputs)
    inputs.slots = {a: s for a, s in session.execute(select(MinerUptime.address, MinerUptime.slots)
                                                     .where(MinerUptime.epoch == epoch))}
    for node, bps in session.execute(select(Bribe.node, Bribe.bps).where(Bribe.effective_epoch <= epoch)
                                     .order_by(Bribe.id)):
        inputs.bribes[node] = bps  # the latest setting wins
    sums = _kind_sums(session, end)
    inputs.fees, minted = sums[AccountKind.FEES], -sums[AccountKind.MINT]
    inputs.burned = sum(int(a) for (a,) in session.execute(
        select(Leg.amount).join(Account, Account.id == Leg.account_id)
        .where(Account.kind == AccountKind.BURN, Leg.at_ms >= start, Leg.at_ms < end)))
    bodies: list[dict[str, Any]] = list(session.scalars(
        select(Tx.body).where(Tx.kind == FUND_KIND, Tx.at_ms >= start, Tx.at_ms < end)))
    inputs.micro_units = sum(int(body.get("micro_units", 0)) for body in bodies)
    inputs.base_fee = base_fee_at(session, rules, epoch)
    tge_done = session.scalar(select(func.count()).select_from(Tx).where(Tx.key == "tge", Tx.at_ms < end))
    inputs.remaining = rules.cap - minted - (0 if tge_done else rules.testnet_pool)
    return inputs


def base_fee_at(session: Session, rules: Rules, epoch: int) -> int:
    """The base fee per micro-unit in effect during ``epoch``: EIP-1559's rule applied from the last closed epoch
    before it (or the starting fee from the book's first epoch) over each ended epoch's purchases. Those are final
    once the epoch ends, so an epoch's price is known before the one before it is closed, and what a purchase
    pays is what that epoch's report states."""
    last = session.execute(select(Epoch.epoch, Epoch.next_base_fee_per_micro).where(Epoch.epoch < epoch)
                           .order_by(Epoch.epoch.desc()).limit(1)).first()
    if last is not None:
        begin, fee = int(last[0]) + 1, int(last[1])
    else:
        first = session.scalar(select(func.min(Tx.epoch)))
        begin, fee = (epoch if first is None else min(int(first), epoch)), rules.base_fee_per_micro
    units: dict[int, int] = defaultdict(int)
    rows = session.execute(select(Tx.epoch, Tx.body).where(Tx.kind == FUND_KIND, Tx.epoch >= begin,
                                                          Tx.epoch < epoch)).tuples()
    for bought_in, body in rows:
        units[bought_in] += int(body.get("micro_units", 0))
    for n in range(begin, epoch):
        fee = next_base_fee(fee, units[n], rules.target_micro_units)
    return fee


def _stake(session: Session, inputs: EpochInputs) -> None:
    legs: dict[tuple[str, str, str], list[tuple[int, int]]] = defaultdict(list)
    rows = session.execute(select(Account.node, Account.owner, Account.token, Leg.amount, Leg.at_ms)
                           .join(Account, Account.id == Leg.account_id)
                           .where(Account.kind == AccountKind.STAKE, Leg.at_ms < inputs.end_ms))
    for node, owner, token, amount, at in rows:
        legs[(node, owner, Token(token).value)].append((int(amount), int(at)))
    for (node, owner, name), position in legs.items():
        st = stake_time(position, inputs.start_ms, inputs.end_ms)
        if st > 0:
            inputs.stake_times.setdefault(node, {})[(owner, name)] = st


def _points(session: Session, inputs: EpochInputs) -> None:
    rows = session.execute(select(PointsEntry.miner_address, func.sum(PointsEntry.amount_micro))
                           .where(PointsEntry.kind.in_(CREDITED_KINDS),
                                  PointsEntry.created_at >= inputs.start_ms / 1000,
                                  PointsEntry.created_at < inputs.end_ms / 1000)
                           .group_by(PointsEntry.miner_address))
    inputs.points = {address: int(total or 0) for address, total in rows}


def _kind_sums(session: Session, end_ms: int) -> dict[AccountKind, int]:
    """Σ legs per account kind dated before ``end_ms`` (the system accounts: mint, fees)."""
    sums: dict[AccountKind, int] = defaultdict(int)
    for kind, amount in session.execute(select(Account.kind, Leg.amount).join(Account, Account.id == Leg.account_id)
                                        .where(Account.kind.in_([AccountKind.MINT, AccountKind.FEES]),
                                               Leg.at_ms < end_ms)):
        sums[AccountKind(kind)] += int(amount)
    return sums
