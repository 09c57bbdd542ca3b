"""What each signed action posts: its legs, checked against the rules before anything is written.

Each handler reads what it needs under the caller's transaction and returns a ``Plan`` (legs plus the
attributes of any account it opens); ``heurist.economy.service`` posts it. A refusal is an
``EconomyError`` naming the field: the transaction rolls back and nothing changes.

* stake: liquid -> stake on a registered miner node, at least the minimum stake.
* unstake: HUE -> a lock account that opens ``unstake_lock_s`` later (it earns nothing: it is not stake);
  esHUE -> liquid esHUE at once.
* move-stake: node -> node, instant, either token.
* withdraw: matured locks -> liquid HUE, oldest first; otherwise the error gives the next unlock time.
* vest: liquid esHUE -> a vest account; claim: what has vested (floor of total x elapsed / period, less
  what was claimed) -> liquid HUE. esHUE turns into HUE 1:1, so supply does not move.
* bribe: from the next epoch on; no legs.
* fund-key: HUE -> burn (base fee) + the miners' fee pool; the key gets the credit micro-units bought.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from eth_utils import to_checksum_address
from sqlalchemy import select
from sqlalchemy.orm import Session

from heurist.economy.actions import Action, Claim, FundKey, MoveStake, SetBribe, Stake, Unstake, Vest, Withdraw
from heurist.economy.amounts import format_hue
from heurist.economy.book import BURN, FEES, EconomyError, Ref, liquid, stake
from heurist.economy.config import BPS, Rules
from heurist.economy.tables import Account, AccountKind, Token
from heurist.ledger.tables import Miner


@dataclass
class Plan:
    legs: list[tuple[Ref, int]] = field(default_factory=list)
    attrs: dict[Ref, dict[str, Any]] = field(default_factory=dict)
    effects: dict[str, Any] = field(default_factory=dict)  # what the service records beside the legs


@dataclass(frozen=True)
class Context:
    session: Session
    rules: Rules
    now_ms: int
    key: str  # the transaction's idempotency key (names the accounts it opens)
    base_fee_per_micro: int


def when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")


def _node(ctx: Context, address: str, field_name: str = "node") -> str:
    checksummed = to_checksum_address(address)
    if ctx.session.get(Miner, checksummed) is None:
        raise EconomyError(f"{field_name}: {checksummed} is not a miner node (it never registered with the "
                           f"ledger); `heurist nodes` lists them")
    return checksummed


def plan_stake(ctx: Context, a: Stake) -> Plan:
    node = _node(ctx, a.node)
    if a.amount < ctx.rules.min_stake:
        raise EconomyError(f"amount: {format_hue(a.amount)} {a.token} is below the minimum stake of "
                           f"{format_hue(ctx.rules.min_stake)}")
    owner, token = to_checksum_address(a.account), Token(a.token)
    return Plan(legs=[(liquid(owner, token), -a.amount), (stake(owner, node, token), a.amount)])


def plan_unstake(ctx: Context, a: Unstake) -> Plan:
    node, owner, token = _node(ctx, a.node), to_checksum_address(a.account), Token(a.token)
    if token is Token.ESHUE:
        return Plan(legs=[(stake(owner, node, token), -a.amount), (liquid(owner, token), a.amount)])
    lock = Ref(AccountKind.LOCK, Token.HUE, owner, node, ctx.key)
    unlock_at = ctx.now_ms + ctx.rules.unstake_lock_s * 1000
    return Plan(legs=[(stake(owner, node, token), -a.amount), (lock, a.amount)],
                attrs={lock: {"unlock_at_ms": unlock_at}}, effects={"unlock_at": when(unlock_at)})


def plan_move(ctx: Context, a: MoveStake) -> Plan:
    source, target = _node(ctx, a.from_node, "from_node"), _node(ctx, a.to_node, "to_node")
    if source == target:
        raise EconomyError("to_node: the same node as from_node; nothing to move")
    owner, token = to_checksum_address(a.account), Token(a.token)
    return Plan(legs=[(stake(owner, source, token), -a.amount), (stake(owner, target, token), a.amount)])


def _positions(ctx: Context, owner: str, kind: AccountKind) -> list[Account]:
    """The owner's lock or vest accounts, locked on PostgreSQL: two claims at once take turns, and the second
    reads what the first left (SQLite's write lock, taken first, does the same)."""
    query = (select(Account).where(Account.owner == owner, Account.kind == kind).order_by(Account.id)
             .execution_options(populate_existing=True))
    if ctx.session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update()
    return list(ctx.session.scalars(query))


def plan_withdraw(ctx: Context, a: Withdraw) -> Plan:
    owner = to_checksum_address(a.account)
    locks = [acc for acc in _positions(ctx, owner, AccountKind.LOCK) if acc.balance > 0]
    ready = sorted((acc for acc in locks if (acc.unlock_at_ms or 0) <= ctx.now_ms), key=lambda acc: acc.id)
    free = sum(acc.balance for acc in ready)
    if free < a.amount:
        waiting = sorted((acc for acc in locks if (acc.unlock_at_ms or 0) > ctx.now_ms),
                         key=lambda acc: acc.unlock_at_ms or 0)
        after = (f"; next {format_hue(waiting[0].balance)} HUE unlocks at {when(waiting[0].unlock_at_ms or 0)}"
                 if waiting else "")
        raise EconomyError(f"amount: {format_hue(a.amount)} HUE asked, {format_hue(free)} HUE is unlocked"
                           f"{after}")
    legs: list[tuple[Ref, int]] = []
    left = a.amount
    for acc in ready:
        take = min(left, acc.balance)
        legs.append((Ref(AccountKind.LOCK, Token.HUE, owner, acc.node, acc.ref), -take))
        left -= take
        if not left:
            break
    return Plan(legs=[*legs, (liquid(owner), a.amount)])


def plan_vest(ctx: Context, a: Vest) -> Plan:
    owner = to_checksum_address(a.account)
    vest = Ref(AccountKind.VEST, Token.ESHUE, owner, "", ctx.key)
    end = ctx.now_ms + ctx.rules.vesting_s * 1000
    return Plan(legs=[(liquid(owner, Token.ESHUE), -a.amount), (vest, a.amount)],
                attrs={vest: {"vest_total": a.amount, "vest_start_ms": ctx.now_ms, "vest_end_ms": end}},
                effects={"vested_by": when(end)})


def vested(acc: Account, now_ms: int) -> int:
    """esHUE of a vest account released by ``now_ms`` (claimed or not): floor(total x elapsed / period)."""
    total, start, end = acc.vest_total or 0, acc.vest_start_ms or 0, acc.vest_end_ms or 0
    elapsed = min(max(now_ms - start, 0), end - start)
    return total * elapsed // (end - start) if end > start else total


def claimable(acc: Account, now_ms: int) -> int:
    return vested(acc, now_ms) - ((acc.vest_total or 0) - acc.balance)


def plan_claim(ctx: Context, a: Claim) -> Plan:
    owner = to_checksum_address(a.account)
    legs = [(Ref(AccountKind.VEST, Token.ESHUE, owner, "", acc.ref), -c)
            for acc in _positions(ctx, owner, AccountKind.VEST) if (c := claimable(acc, ctx.now_ms)) > 0]
    total = -sum(amount for _, amount in legs)
    if not total:
        raise EconomyError(f"account: {owner} has no vested HUE to claim yet (esHUE vests linearly over "
                           f"{ctx.rules.vesting_s // 86_400} days from `heurist vest`)")
    return Plan(legs=[*legs, (liquid(owner), total)], effects={"claimed": str(total)})


def plan_bribe(ctx: Context, a: SetBribe) -> Plan:
    if not 0 <= a.bps <= BPS:
        raise EconomyError(f"bps: {a.bps} is outside 0-{BPS} (0-100 %); 2500 gives stakers 25 % of the rewards")
    node = _node(ctx, a.node)
    return Plan(effects={"node": node, "bps": a.bps, "effective_epoch": ctx.rules.epoch_of(ctx.now_ms) + 1})


def plan_fund(ctx: Context, a: FundKey) -> Plan:
    from heurist.credits.tables import ApiKey

    key = ctx.session.get(ApiKey, a.key_id)
    if key is None or key.disabled:
        raise EconomyError(f"key_id: no enabled API key {a.key_id} (`heurist keys list`)")
    price = ctx.base_fee_per_micro + ctx.rules.miner_fee_per_micro
    micro = a.amount // price
    if micro == 0:
        raise EconomyError(f"amount: {format_hue(a.amount)} HUE buys nothing; one credit unit costs "
                           f"{format_hue(price * 1_000_000)} HUE now")
    owner = to_checksum_address(a.account)
    burn, tip = micro * ctx.base_fee_per_micro, micro * ctx.rules.miner_fee_per_micro
    return Plan(legs=[(liquid(owner), -(burn + tip)), (BURN, burn), (FEES, tip)],
                effects={"key_id": a.key_id, "micro_units": micro, "base_fee_per_micro": ctx.base_fee_per_micro,
                         "spent": str(burn + tip)})


PLANS: dict[type[Action], Any] = {Stake: plan_stake, Unstake: plan_unstake, MoveStake: plan_move,
                                  Withdraw: plan_withdraw, Vest: plan_vest, Claim: plan_claim, SetBribe: plan_bribe,
                                  FundKey: plan_fund}
