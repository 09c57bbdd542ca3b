"""The epoch formulas, pure and exact (ints only), so the worked examples and the close share one code.

**Pool.** ``pool = emission + fees``: ``emission = remaining x epoch_s // tau`` where ``remaining`` is the cap
less everything ever minted (burns are never re-minted) and less the testnet's 50 M until TGE; ``fees`` is
the miners' fee pool at the epoch's end.

**Weight of a node.** ``w = points x slots x isqrt(stake)`` for an *active* node, else 0:

* ``points``: credited micro-points of the epoch (they already carry GPU efficiency and model type through
  the catalog's benchmark coefficients), net of clawbacks, at least 0;
* ``slots``: heartbeat slots the node was heard in, of the epoch's ``slots_per_epoch`` (uptime =
  slots / slots_per_epoch, a constant factor that cancels between nodes);
* ``isqrt(stake)``: the concave stake factor over the node's time-weighted average stake (own plus
  delegated, both tokens). Four times the stake doubles the weight: stake helps, but cannot buy the pool.
* active: that average stake is at least the activation threshold (10,000 HUE). Averaging over the epoch
  means a stake made in the last second counts for one second.

**Split.** ``reward_i = pool x w_i // W``. Inside a node, stakers get ``reward x bribe_bps // 10,000``, shared by
stake-time weighted by token (esHUE x 1.5); the operator gets the rest. Every floor's remainder goes to a
named party: within a node to its operator; of the pool to the next epoch (unminted emission stays in the
budget, unspent fees stay in the fee pool). Nothing is lost and nothing is created.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from math import isqrt

from heurist.economy.config import BPS

FEE_CHANGE_DENOMINATOR = 8  # EIP-1559's: the base fee moves by at most 1/8 per epoch


def emission(remaining: int, epoch_s: int, tau_s: int) -> int:
    return max(0, remaining) * epoch_s // tau_s


def next_base_fee(base: int, used: int, target: int) -> int:
    """EIP-1559's update, clamped to ±1/8: above target it rises by at least 1, and it never reaches 0."""
    if used == target:
        return base
    step = base * abs(used - target) // target // FEE_CHANGE_DENOMINATOR
    step = min(step, base // FEE_CHANGE_DENOMINATOR)
    if used > target:
        return base + max(step, 1)
    return max(1, base - step)


def stake_time(legs: Iterable[tuple[int, int]], start_ms: int, end_ms: int) -> int:
    """Σ amount x ms held within [start, end) over a position's legs (amount, at_ms); legs at or after the end
    do not count. Divided by the epoch's length it is the time-weighted average stake."""
    return sum(amount * (end_ms - max(at, start_ms)) for amount, at in legs if at < end_ms)


def weight(points_micro: int, slots: int, avg_stake: int, activation: int) -> int:
    if avg_stake < activation or points_micro <= 0 or slots <= 0:
        return 0
    return points_micro * slots * isqrt(avg_stake)


def split(total: int, shares: Mapping[str, int]) -> tuple[dict[str, int], int]:
    """``total`` pro rata to ``shares`` (floors), and the remainder. No shares: nothing paid."""
    whole = sum(shares.values())
    if whole <= 0:
        return {}, total
    paid = {k: total * s // whole for k, s in shares.items() if s > 0}
    return paid, total - sum(paid.values())


@dataclass(frozen=True)
class NodeSplit:
    to_stakers: dict[tuple[str, str], int]  # (staker, token) -> esHUE
    to_operator: int  # the rest of the node's reward, remainders included


def split_node(reward: int, bribe_bps: int, stake_times: Mapping[tuple[str, str], int],
               eshue_multiplier_bps: int) -> NodeSplit:
    """A node's reward between its stakers (the bribe, by token-weighted stake-time) and its operator."""
    weighted = {f"{owner}|{token}": st * (eshue_multiplier_bps if token == "esHUE" else BPS)
                for (owner, token), st in stake_times.items()}
    bribe = reward * bribe_bps // BPS
    paid, _ = split(bribe, weighted)
    to_stakers = {(k.split("|")[0], k.split("|")[1]): v for k, v in paid.items() if v > 0}
    return NodeSplit(to_stakers=to_stakers, to_operator=reward - sum(to_stakers.values()))
