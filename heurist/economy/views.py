"""What the CLI and the gateway show of the economy: balances, nodes and supply, each from a few aggregate queries.

Why aggregate reads and not ``Economy`` calls in a loop: ``heurist nodes`` must show every node's stake, bribe,
uptime and points (stakers compare bribe, performance and uptime before they choose), and one query per node
would be 6 round trips per node — 600 queries for 100 nodes. Instead each view reads each table once (stake
accounts, bribes, uptime, points of two epochs in one ``GROUP BY`` with ``CASE`` buckets, audits likewise)
and joins in Python: 6 queries whatever the number of nodes or stakers.

Amounts are decimal strings of base units (exact: a uint256 does not survive a JavaScript number past 2^53)
with a ``*_hue`` twin in decimal HUE for people. Amounts are summed in Python because on SQLite they are text.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlalchemy import case, func, select

from heurist.db.engine import session_scope
from heurist.economy.actions import ACTIONS, Action
from heurist.economy.amounts import format_hue
from heurist.economy.book import EconomyError
from heurist.economy.config import BPS
from heurist.economy.handlers import claimable, when
from heurist.economy.service import Economy, checksummed
from heurist.economy.tables import Account, AccountKind, Bribe, Token
from heurist.ledger.reader import sum_micro
from heurist.ledger.tables import CREDITED_KINDS, Audit, AuditOutcome, Miner, MinerUptime, PointsEntry
from heurist.ledger.uptime import EpochClock
from heurist.points import from_micro


def amount(name: str, units: int) -> dict[str, str]:
    """``{name: "1500000000000000000", name_hue: "1.5"}``."""
    return {name: str(units), f"{name}_hue": format_hue(units)}


def balances(economy: Economy, address: str) -> dict[str, Any]:
    """Everything ``address`` holds: liquid, staked per node and token, locks, vesting, and its next nonce."""
    owner, now = checksummed(address), economy.now_ms()
    with session_scope(economy.engine) as session:
        accounts = list(session.scalars(select(Account).where(Account.owner == owner).order_by(Account.id)))
    liquid = {token.value: 0 for token in Token}
    staked: list[dict[str, Any]] = []
    locks: list[dict[str, Any]] = []
    vesting: list[dict[str, Any]] = []
    for acc in accounts:
        if acc.kind is AccountKind.LIQUID:
            liquid[acc.token.value] += acc.balance
        elif acc.kind is AccountKind.STAKE and acc.balance:
            staked.append({"node": acc.node, "token": acc.token.value, **amount("amount", acc.balance)})
        elif acc.kind is AccountKind.LOCK and acc.balance:
            unlock = acc.unlock_at_ms or 0
            locks.append({"node": acc.node, **amount("amount", acc.balance), "unlock_at": when(unlock),
                          "withdrawable": unlock <= now})
        elif acc.kind is AccountKind.VEST and acc.balance:
            total = acc.vest_total or 0
            vesting.append({**amount("total", total), **amount("claimed", total - acc.balance),
                            **amount("claimable", claimable(acc, now)), "started": when(acc.vest_start_ms or 0),
                            "vested_by": when(acc.vest_end_ms or 0)})
    return {
        "address": owner, "now": when(now), "nonce": economy.next_nonce(owner),
        **amount("hue", liquid[Token.HUE.value]), **amount("eshue", liquid[Token.ESHUE.value]),
        "staked": staked, **amount("staked_total", sum(int(s["amount"]) for s in staked)),
        "locks": locks, **amount("withdrawable", sum(int(lk["amount"]) for lk in locks if lk["withdrawable"])),
        "vesting": vesting, **amount("claimable", sum(int(v["claimable"]) for v in vesting)),
    }


def nodes(economy: Economy, interval_s: float) -> list[dict[str, Any]]:
    """Every registered miner node: stake, activation, bribe (now and next epoch), uptime and points of this
    epoch and the last, audits of both; sorted by total stake, largest first."""
    clock, now = EpochClock(interval_s=interval_s, epoch_s=economy.rules.epoch_s), economy.clock()
    current = clock.epoch(now)
    last_start, cur_start, cur_end = ((current + k) * economy.rules.epoch_s for k in (-1, 0, 1))
    in_current = PointsEntry.created_at >= cur_start
    with session_scope(economy.engine) as session:
        miners = session.execute(select(Miner.address, Miner.last_seen, Miner.models)).all()
        stakes = session.execute(select(Account.node, Account.owner, Account.token, Account.balance)
                                 .where(Account.kind == AccountKind.STAKE)).all()
        bribes = session.execute(select(Bribe.node, Bribe.bps, Bribe.effective_epoch)
                                 .where(Bribe.effective_epoch <= current + 1).order_by(Bribe.id)).all()
        uptime = session.execute(select(MinerUptime.address, MinerUptime.epoch, MinerUptime.slots)
                                 .where(MinerUptime.epoch.in_([current - 1, current]))).all()
        points = session.execute(
            select(PointsEntry.miner_address,
                   func.sum(case((in_current, 0), else_=PointsEntry.amount_micro)),
                   func.sum(case((in_current, PointsEntry.amount_micro), else_=0)))
            .where(PointsEntry.kind.in_(CREDITED_KINDS), PointsEntry.created_at >= last_start,
                   PointsEntry.created_at < cur_end)
            .group_by(PointsEntry.miner_address)).all()
        audits = session.execute(select(Audit.miner_address, Audit.outcome, func.count())
                                 .where(Audit.audited_at >= last_start)
                                 .group_by(Audit.miner_address, Audit.outcome)).all()
    by_node: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    stakers: dict[str, set[str]] = defaultdict(set)
    for node, owner, token, balance in stakes:
        if balance:
            by_node[node][f"{'own' if owner == node else 'delegated'}_{token.value}"] += balance
            stakers[node].add(owner)
    bribe_now: dict[str, int] = {}
    bribe_next: dict[str, int] = {}
    for node, bps, effective in bribes:  # in id order: the last setting effective by then wins
        bribe_next[node] = bps
        if effective <= current:
            bribe_now[node] = bps
    slots = {(address, epoch): n for address, epoch, n in uptime}
    earned = {address: (sum_micro(last), sum_micro(this)) for address, last, this in points}
    checked: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for address, outcome, count in audits:
        checked[address][AuditOutcome(outcome).value] += int(count)
    rows: list[dict[str, Any]] = []
    for address, last_seen, models in miners:
        parts = by_node[address]
        total = sum(parts.values())
        last_points, this_points = earned.get(address, (0, 0))
        rows.append({
            "node": address, **amount("stake", total),
            **{f"{k}_{t.value}": str(parts[f"{k}_{t.value}"]) for k in ("own", "delegated") for t in Token},
            "stakers": len(stakers[address]), "active": total >= economy.rules.activation,
            "bribe_bps": bribe_now.get(address, 0), "bribe_percent": bribe_now.get(address, 0) * 100 / BPS,
            "next_bribe_bps": bribe_next.get(address, 0),
            "uptime": slots.get((address, current), 0) / clock.slots_elapsed(current, now),
            "uptime_last": slots.get((address, current - 1), 0) / clock.slots_per_epoch,
            "points": from_micro(this_points), "points_last": from_micro(last_points),
            "audits_passed": checked[address][AuditOutcome.PASSED.value],
            "audits_failed": checked[address][AuditOutcome.FAILED.value],
            "last_seen": when(int(last_seen * 1000)), "models": list(models or []),
        })
    return sorted(rows, key=lambda r: (-int(r["stake"]), r["node"]))


def supply(economy: Economy) -> dict[str, Any]:
    """Minted, burned, supply against the cap, and the conservation buckets (they sum to the supply)."""
    with session_scope(economy.engine) as session:
        rows = session.execute(select(Account.kind, Account.balance)).all()
    totals: dict[AccountKind, int] = defaultdict(int)
    for kind, balance in rows:
        totals[AccountKind(kind)] += balance
    minted, burned = -totals[AccountKind.MINT], totals[AccountKind.BURN]
    buckets = {"liquid": AccountKind.LIQUID, "staked": AccountKind.STAKE, "locked": AccountKind.LOCK,
               "vesting": AccountKind.VEST, "unclaimed": AccountKind.FEES}
    held = {name: totals[kind] for name, kind in buckets.items()}
    return {**amount("minted", minted), **amount("burned", burned), **amount("supply", minted - burned),
            **amount("cap", economy.rules.cap), **{k: v for name, units in held.items()
                                                   for k, v in amount(name, units).items()},
            "conserved": minted - burned == sum(held.values())}


def typed_data(economy: Economy, action: str) -> dict[str, Any]:
    """The EIP-712 domain, types and primary type of ``action``, plus ``fields`` (name -> type): a wallet adds
    the ``message`` and signs it with ``eth_signTypedData_v4``."""
    cls = ACTIONS.get(action)
    if cls is None:
        raise EconomyError(f"action: unknown action {action!r}; one of {', '.join(ACTIONS)}")
    zeros: dict[str, Any] = {name: 0 for name, _ in cls.types}
    blank: Action = cls.model_construct(**zeros)
    data = economy.domain.typed_data(blank)
    del data["message"]
    return {**data, "fields": dict(cls.types)}


__all__ = ["amount", "balances", "checksummed", "nodes", "supply", "typed_data"]
