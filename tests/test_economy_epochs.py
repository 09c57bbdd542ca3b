"""Worked examples of the epoch close (``heurist.economy.epochs``), every amount computed by hand, on both databases.

Every expected integer below is arithmetic written out in the test (never a call into ``rewards.py``): one-hour
epochs of 120 slots, τ = 4 years (126,144,000 s), stakes in HUE whose square roots are whole (√(10,000 HUE) =
√10²² = 10¹¹ base units), so a reader can redo each line. Epoch ``E`` starts at 2030-01-01T00:00:00Z.

* emission = remaining x 3,600 // τ, remaining = 1e9 HUE - minted - the testnet's 50 M; two nodes split it by
  points x slots x √stake; the floor's remainder (1 base unit) is not minted;
* activation at exactly 10,000 HUE of *time-averaged* stake (20,000 staked half-way: active; at 3/4: not);
* a 25 % bribe shared by stake-time (esHUE 1.5x), remainders to the operator, all compounded as esHUE stake,
  a bribe applying from the epoch after it was set;
* fees: burned base fee, the miners' share paid in the close, EIP-1559 above/below/at target, zero units and
  the 1/8 clamp, deflationary epochs;
* idempotence, order, grace, and a late close that equals the hand-computed on-time one;
* Merkle leaves = payouts, proofs verify; no active node: nothing issued, the fees wait for a later epoch.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass, field, replace
from math import isqrt
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from heurist.credits.ledger import CreditLedger
from heurist.credits.tables import ApiKey
from heurist.db.engine import session_scope
from heurist.economy.actions import Action, FundKey, SetBribe, Stake, Unstake
from heurist.economy.amounts import ONE
from heurist.economy.book import EconomyError
from heurist.economy.config import CAP, MICRO, TESTNET_POOL, Rules
from heurist.economy.epochs import close_ended, close_epoch, epoch_report, proof
from heurist.economy.merkle import MerkleTree, verify
from heurist.economy.service import Economy, Receipt
from heurist.economy.tables import Account, AccountKind, Bribe, Epoch, Leg, Payout, Token, Tx
from heurist.identity import Wallet
from heurist.ledger.tables import EntryKind, MinerUptime, PointsEntry
from tests.fixtures.economy import T0_MS, MsClock, add_node, grant_eshue

H = 3_600_000  # one epoch in ms
E = T0_MS // H  # 525,960: the epoch starting 2030-01-01T00:00:00Z
END = T0_MS + H  # E's end (exclusive), 01:00:00Z
TAU = 4 * 365 * 86_400  # 126,144,000 s
BASE0 = 10**16 // MICRO  # the starting base fee, 0.01 HUE a unit = 10^10 base units a micro-unit
MINER = 2 * 10**15 // MICRO  # the miners' share, 0.002 HUE a unit
RULES = Rules(epoch_s=3600, close_grace_s=0, slots_per_epoch=120, target_micro_units=1_000 * MICRO)


@dataclass
class World:
    engine: Engine
    clock: MsClock
    economy: Economy
    nonces: dict[str, int] = field(default_factory=dict)

    def at(self, ms: int) -> None:
        self.clock.now_ms = ms

    def act(self, wallet: Wallet, action: type[Action], **fields: Any) -> Receipt:
        nonce = self.nonces.get(wallet.address, 0)
        self.nonces[wallet.address] = nonce + 1
        return self.economy.apply(self.economy.domain.sign(wallet, action(nonce=nonce, **fields)))

    def stake(self, wallet: Wallet, node: Wallet, amount: int, token: str = "HUE") -> None:
        self.act(wallet, Stake, account=wallet.address, node=node.address, token=token, amount=amount)

    def points(self, node: Wallet, micro: int, at_ms: int, kind: EntryKind = EntryKind.JOB_CREDIT) -> None:
        with session_scope(self.engine) as session:
            session.add(PointsEntry(idempotency_key=f"test:{uuid.uuid4().hex}", miner_address=node.address,
                                    job_id=None, kind=kind, amount_micro=micro, created_at=at_ms / 1000))

    def uptime(self, node: Wallet, epoch: int, slots: int) -> None:
        with session_scope(self.engine) as session:
            session.add(MinerUptime(address=node.address, epoch=epoch, slots=slots, last_slot=0))

    def held(self, kind: AccountKind, token: Token = Token.HUE, owner: str = "", node: str = "") -> int:
        with session_scope(self.engine) as session:
            value = session.scalar(select(Account.balance).where(Account.kind == kind, Account.token == token,
                                                                 Account.owner == owner, Account.node == node))
        return int(value or 0)

    def eshue_stake(self, owner: Wallet, node: Wallet) -> int:
        return self.held(AccountKind.STAKE, Token.ESHUE, owner.address, node.address)

    def fees(self) -> int:
        return self.held(AccountKind.FEES)


@pytest.fixture
def world(engine: Engine) -> World:
    clock = MsClock(T0_MS)
    return World(engine, clock, Economy(engine, RULES, clock=clock))


def by_node(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n["node"]: n for n in report["nodes"]}


def payouts(report: dict[str, Any]) -> dict[str, int]:
    return {p["address"]: int(p["amount"]) for p in report["payouts"]}


def snapshot(engine: Engine) -> tuple[object, ...]:
    """Every economy table's row count and every account's balance."""
    with session_scope(engine) as session:
        counts = {t.__tablename__: session.scalar(select(func.count()).select_from(t))
                  for t in (Account, Tx, Leg, Bribe, Epoch, Payout)}
        balances = sorted((a.kind.value, a.token.value, a.owner, a.node, a.ref, a.balance)
                          for a in session.scalars(select(Account)))
    return counts, balances


def check_merkle(economy: Economy, report: dict[str, Any]) -> None:
    """The report's payouts are exactly the leaves of its root, and each address's proof verifies."""
    leaves = [(p["address"], int(p["amount"])) for p in report["payouts"]]
    assert leaves and MerkleTree.of(leaves).root == report["merkle_root"]
    for address, amount in leaves:
        got = proof(economy, address, report["epoch"])
        assert (got["address"], got["amount"], got["root"]) == (address, str(amount), report["merkle_root"])
        assert verify(got["root"], address, amount, got["proof"])
        assert not verify(got["root"], address, amount + 1, got["proof"])


# ------------------------------------------------------------------------------------- two nodes, by weight


@dataclass(frozen=True)
class TwoNodes:
    a: Wallet
    b: Wallet


def two_nodes(w: World) -> TwoNodes:
    """A: 10,000 HUE, 3 points (at E's last ms), 120 slots. B: 40,000 HUE, 1.5 - 0.5 clawed back = 1 point (at E's
    first ms), 9 points still in escrow (not credited), 50 slots. A's 7 points at E's end belong to E+1."""
    a, b = add_node(w.engine), add_node(w.engine)
    w.at(T0_MS)  # genesis and stakes at E's first ms: a full epoch of stake-time
    w.economy.genesis({a.address: 10_000 * ONE, b.address: 40_000 * ONE})
    w.stake(a, a, 10_000 * ONE)
    w.stake(b, b, 40_000 * ONE)
    w.points(a, 3_000_000, END - 1)
    w.points(a, 7_000_000, END)
    w.points(b, 1_500_000, T0_MS)
    w.points(b, -500_000, T0_MS + 10, EntryKind.CLAWBACK)
    w.points(b, 9_000_000, T0_MS + 20, EntryKind.ESCROW)
    w.uptime(a, E, 120)
    w.uptime(b, E, 50)
    return TwoNodes(a, b)


def check_two_nodes(w: World, n: TwoNodes, report: dict[str, Any]) -> None:
    remaining = CAP - (10_000 + 40_000) * ONE - TESTNET_POOL  # 949,950,000 HUE: genesis minted 50,000, before TGE
    emission = remaining * 3_600 // TAU
    assert emission == 27_110_445_205_479_452_054_794  # 949,950,000 HUE / 35,040 = 27,110.445205479452054794...
    weight_a = 3_000_000 * 120 * 10**11  # micro-points x slots x √(10^22) = 3.6e19
    weight_b = 1_000_000 * 50 * 2 * 10**11  # √(4e22) = 2e11: 1.0e19
    reward_a = emission * weight_a // (weight_a + weight_b)  # 36/46 of the pool
    reward_b = emission * weight_b // (weight_a + weight_b)  # 10/46
    assert emission - reward_a - reward_b == 1  # the floors' remainder: not minted

    assert report["epoch"] == E
    assert (report["start"], report["end"]) == ("2030-01-01T00:00:00+00:00", "2030-01-01T01:00:00+00:00")
    assert report["issued"] == str(reward_a + reward_b)
    assert (report["burned"], report["fees_to_miners"], report["units"]) == ("0", "0", 0)
    assert report["deflationary"] is False
    assert report["stakers"] == []
    nodes = by_node(report)
    assert nodes[n.a.address] == {"node": n.a.address, "points": 3.0, "uptime_slots": 120,
                                  "stake": str(10_000 * ONE), "active": True, "weight": str(weight_a),
                                  "reward": str(reward_a), "bribe_bps": 0, "to_stakers": "0",
                                  "to_operator": str(reward_a)}
    assert nodes[n.b.address] == {"node": n.b.address, "points": 1.0, "uptime_slots": 50,
                                  "stake": str(40_000 * ONE), "active": True, "weight": str(weight_b),
                                  "reward": str(reward_b), "bribe_bps": 0, "to_stakers": "0",
                                  "to_operator": str(reward_b)}
    assert report["payouts"] == [{"address": addr, "amount": str(v)}
                                 for addr, v in sorted({n.a.address: reward_a, n.b.address: reward_b}.items())]
    # compounded: each operator's reward is esHUE staked on its own node
    assert (w.eshue_stake(n.a, n.a), w.eshue_stake(n.b, n.b)) == (reward_a, reward_b)


def test_emission_split_by_points_uptime_and_root_stake(world: World) -> None:
    nodes = two_nodes(world)
    minted = world.economy.minted()
    assert minted == 50_000 * ONE
    world.at(END)  # grace 0: closable at the end's first ms
    report = close_epoch(world.economy, E)
    check_two_nodes(world, nodes, report)
    assert world.economy.minted() - minted == int(report["issued"])  # the mint moved by exactly what was paid
    assert sum(payouts(report).values()) == int(report["issued"])
    assert epoch_report(world.economy, E) == report
    check_merkle(world.economy, report)


# ---------------------------------------------------------------------------------------------- activation


def test_activation_is_on_stake_averaged_over_the_epoch(world: World) -> None:
    x, y, z = (add_node(world.engine) for _ in range(3))
    world.economy.genesis({x.address: 9_999 * ONE, y.address: 20_000 * ONE, z.address: 20_000 * ONE})
    world.stake(x, x, 9_999 * ONE)  # all epoch long: 9,999 HUE average
    world.at(T0_MS + H // 2)
    world.stake(y, y, 20_000 * ONE)  # 20,000 x 1/2 = 10,000 HUE average: exactly the threshold
    world.at(T0_MS + H * 3 // 4)
    world.stake(z, z, 20_000 * ONE)  # 20,000 x 1/4 = 5,000 HUE average
    for node in (x, y, z):
        world.points(node, 1_000_000, T0_MS + 1)
        world.uptime(node, E, 120)
    world.at(END)
    report = close_epoch(world.economy, E)

    remaining = CAP - (9_999 + 20_000 + 20_000) * ONE - TESTNET_POOL
    emission = remaining * 3_600 // TAU  # Y alone is active: it takes the whole pool, no remainder
    nodes = by_node(report)
    assert [(nodes[n.address]["stake"], nodes[n.address]["active"], nodes[n.address]["reward"]) for n in (x, y, z)] == [
        (str(9_999 * ONE), False, "0"), (str(10_000 * ONE), True, str(emission)), (str(5_000 * ONE), False, "0")]
    assert nodes[y.address]["weight"] == str(1_000_000 * 120 * 10**11)
    assert nodes[x.address]["weight"] == nodes[z.address]["weight"] == "0"
    assert report["issued"] == str(emission)
    assert payouts(report) == {y.address: emission}
    assert (world.eshue_stake(x, x), world.eshue_stake(y, y), world.eshue_stake(z, z)) == (0, emission, 0)
    check_merkle(world.economy, report)
    with pytest.raises(EconomyError, match=r"^address: .* was paid nothing in epoch") as paid_nothing:
        proof(world.economy, x.address, E)
    assert x.address in str(paid_nothing.value)
    with pytest.raises(EconomyError, match=rf"^epoch: {E + 1} is not closed"):
        proof(world.economy, y.address, E + 1)


# -------------------------------------------------------------------------------------------------- bribes


def test_bribe_shares_by_stake_time_eshue_counts_more_and_applies_from_the_next_epoch(world: World) -> None:
    op, s1, s2 = add_node(world.engine), Wallet.create(), Wallet.create()
    world.at(T0_MS - H + 1_000)  # epoch E-1: stakes and a 25 % bribe (effective from E)
    world.economy.genesis({op.address: 20_000 * ONE, s1.address: 3_000 * ONE})
    grant_eshue(world.engine, s2.address, 4_000 * ONE, T0_MS - H + 1_000, E - 1)
    world.stake(op, op, 20_000 * ONE)
    world.stake(s1, op, 3_000 * ONE)
    world.act(op, SetBribe, node=op.address, bps=2_500)
    world.at(T0_MS + H // 4)
    world.stake(s2, op, 4_000 * ONE, "esHUE")  # held for 3/4 of E
    world.at(T0_MS + H // 2)
    world.act(op, SetBribe, node=op.address, bps=5_000)  # set during E: applies from E+1
    world.points(op, 2_000_000, T0_MS + 5)
    world.uptime(op, E, 100)
    assert [world.economy.bribe(op.address, e) for e in (E - 1, E, E + 1)] == [0, 2_500, 5_000]

    world.at(END + H)
    before = close_epoch(world.economy, E - 1)  # stake but no points: nothing paid, and no bribe yet
    assert (before["issued"], before["payouts"], before["merkle_root"]) == ("0", [], None)
    assert by_node(before)[op.address]["bribe_bps"] == 0
    report = close_epoch(world.economy, E)

    remaining = CAP - (20_000 + 3_000 + 4_000) * ONE - TESTNET_POOL  # the esHUE grant was minted too
    reward = remaining * 3_600 // TAU  # the only active node takes the whole pool
    bribe = reward * 2_500 // 10_000
    st_op = 20_000 * ONE * H * 10_000  # stake-time x token weight (bps): HUE 1x ...
    st_s1 = 3_000 * ONE * H * 10_000
    st_s2 = 4_000 * ONE * (H * 3 // 4) * 15_000  # ... esHUE 1.5x, held 3/4 of the epoch
    to_op_as_staker = bribe * st_op // (st_op + st_s1 + st_s2)  # the operator's own stake shares the bribe too
    to_s1 = bribe * st_s1 // (st_op + st_s1 + st_s2)  # 10,800 / 99,000 of the bribe
    to_s2 = bribe * st_s2 // (st_op + st_s1 + st_s2)  # 16,200 / 99,000
    to_operator = reward - to_op_as_staker - to_s1 - to_s2  # the other 75 % and the remainders
    assert bribe - to_op_as_staker - to_s1 - to_s2 == 2  # two base units of remainder, to the operator

    node = by_node(report)[op.address]
    assert (node["stake"], node["bribe_bps"], node["reward"]) == (str(26_000 * ONE), 2_500, str(reward))
    assert node["weight"] == str(2_000_000 * 100 * isqrt(26_000 * ONE))  # √(2.6e22), not a whole square
    assert (node["to_stakers"], node["to_operator"]) == (str(to_op_as_staker + to_s1 + to_s2), str(to_operator))
    assert sorted((s["address"], s["node"], s["token"], s["reward"]) for s in report["stakers"]) == sorted([
        (op.address, op.address, "HUE", str(to_op_as_staker)), (s1.address, op.address, "HUE", str(to_s1)),
        (s2.address, op.address, "esHUE", str(to_s2))])
    assert payouts(report) == {op.address: to_operator + to_op_as_staker, s1.address: to_s1, s2.address: to_s2}
    # compounded as esHUE stake on the node; S2's esHUE stake already held its 4,000
    assert (world.eshue_stake(op, op), world.eshue_stake(s1, op), world.eshue_stake(s2, op)) == (
        to_operator + to_op_as_staker, to_s1, 4_000 * ONE + to_s2)
    assert world.held(AccountKind.STAKE, Token.HUE, s1.address, op.address) == 3_000 * ONE  # untouched
    check_merkle(world.economy, report)

    after = close_epoch(world.economy, E + 1)  # no points in E+1; the 50 % set during E is in effect
    assert by_node(after)[op.address]["bribe_bps"] == 5_000


# ---------------------------------------------------------------------------------------------------- fees


def test_fees_burn_pay_miners_and_move_the_base_fee_like_eip_1559(world: World) -> None:
    # emission made tiny (τ = 10^30 s: 3 base units an epoch) so that burning beats issuing
    world.economy = Economy(world.engine, replace(RULES, emission_tau_s=10**30), clock=world.clock)
    node, buyer = add_node(world.engine), Wallet.create()
    key_id = CreditLedger(world.engine).create_key("buyer")[0]
    world.economy.genesis({node.address: 10_000 * ONE, buyer.address: 1_000 * ONE})
    world.stake(node, node, 10_000 * ONE)
    # target 1,000 units an epoch; next = base ± base x |U - T| // T // 8, the step at most base // 8
    bases = [BASE0,
             BASE0 + BASE0 * 500 // 1_000 // 8,  # E: 1,500 units, above: +1/16 -> 10,625,000,000
             0, 0, 0, 0]
    bases[2] = bases[1] - bases[1] * 500 // 1_000 // 8  # E+1: 500 units, below: -1/16 -> 9,960,937,500
    bases[3] = bases[2]  # E+2: 1,000 units, at target
    bases[4] = bases[3] - bases[3] * 1_000 // 1_000 // 8  # E+3: no units: -1/8 -> 8,715,820,313
    bases[5] = bases[4] + bases[4] // 8  # E+4: 3,000 units: +2/8 clamped to +1/8 -> 9,805,297,852
    assert bases == [10**10, 10_625_000_000, 9_960_937_500, 9_960_937_500, 8_715_820_313, 9_805_297_852]
    units = [1_500, 500, 1_000, 0, 3_000]
    remaining = CAP - 11_000 * ONE - TESTNET_POOL  # genesis 11,000 HUE, before TGE
    credited = 0
    for i, u in enumerate(units):
        world.at(T0_MS + i * H + 60_000)
        assert world.economy.unit_price() == {"base_fee": bases[i] * MICRO, "miner_fee": MINER * MICRO}
        if u:
            world.act(buyer, FundKey, account=buyer.address, key_id=key_id, amount=u * MICRO * (bases[i] + MINER))
        world.points(node, 1_000_000, T0_MS + i * H + 1)
        world.uptime(node, E + i, 120)
        assert world.fees() == u * MICRO * MINER  # the miners' share waits in the fee pool
        world.at(T0_MS + (i + 1) * H)
        report = close_epoch(world.economy, E + i)

        emission = remaining * 3_600 // 10**30
        assert emission == 3
        burned = u * MICRO * bases[i]  # e.g. E: 1.5e9 micro-units x 1e10 = 15 HUE
        tip = u * MICRO * MINER  # e.g. E: 1.5e9 x 2e9 = 3 HUE
        assert (report["issued"], report["burned"], report["fees_to_miners"]) == (str(emission), str(burned),
                                                                                 str(tip))
        assert report["net_issuance"] == str(emission - burned)
        assert report["deflationary"] is (burned > emission)
        assert (report["base_fee"], report["next_base_fee"]) == (str(bases[i] * MICRO), str(bases[i + 1] * MICRO))
        assert report["units"] == u
        assert payouts(report) == {node.address: emission + tip}  # the only active node takes pool = emission + fees
        assert world.fees() == 0
        remaining -= emission
        credited += u * MICRO
    with session_scope(world.engine) as session:
        assert session.get(ApiKey, key_id).balance_micro == credited  # type: ignore[union-attr]
    reports = [epoch_report(world.economy, E + i) for i in range(5)]
    assert [r["deflationary"] for r in reports if r] == [True, True, True, False, True]


def test_no_active_node_issues_nothing_and_the_fees_wait(world: World) -> None:
    node, buyer = add_node(world.engine), Wallet.create()
    key_id = CreditLedger(world.engine).create_key("buyer")[0]
    world.economy.genesis({node.address: 10_000 * ONE, buyer.address: 100 * ONE})
    world.stake(node, node, 10_000 * ONE)
    world.uptime(node, E, 120)  # stake and uptime, but no points in E
    world.act(buyer, FundKey, account=buyer.address, key_id=key_id, amount=100 * MICRO * (BASE0 + MINER))
    tip = 100 * MICRO * MINER  # 0.2 HUE
    minted = world.economy.minted()
    world.at(END)
    report = close_epoch(world.economy, E)
    assert (report["issued"], report["fees_to_miners"], report["burned"]) == ("0", "0", str(100 * MICRO * BASE0))
    assert (report["payouts"], report["merkle_root"], report["stakers"]) == ([], None, [])
    assert by_node(report)[node.address]["reward"] == "0"
    assert (world.fees(), world.economy.minted()) == (tip, minted)
    with pytest.raises(EconomyError, match=r"^address: "):
        proof(world.economy, node.address, E)

    world.points(node, 1_000_000, END + 1)
    world.uptime(node, E + 1, 120)
    world.at(END + H)
    later = close_epoch(world.economy, E + 1)
    emission = (CAP - 10_100 * ONE - TESTNET_POOL) * 3_600 // TAU  # nothing was minted by E's close
    assert (later["issued"], later["fees_to_miners"]) == (str(emission), str(tip))
    assert payouts(later) == {node.address: emission + tip}
    assert world.fees() == 0


# ------------------------------------------------------------------------------ idempotent, ordered, late


def test_closes_are_idempotent_in_order_and_not_before_the_end(world: World) -> None:
    nodes = two_nodes(world)
    world.at(END - 1)
    with pytest.raises(EconomyError, match=rf"^epoch: {E} ends at 2030-01-01T01:00:00\+00:00; it can be closed 0 s"):
        close_epoch(world.economy, E)
    graced = Economy(world.engine, replace(RULES, close_grace_s=60), clock=world.clock)
    world.at(END + 59_999)
    with pytest.raises(EconomyError, match=r"ends at 2030-01-01T01:00:00\+00:00; it can be closed 60 s later"):
        close_epoch(graced, E)
    world.at(END + H)
    with pytest.raises(EconomyError, match=rf"^epoch: close {E} first"):
        close_epoch(world.economy, E + 1)
    assert epoch_report(world.economy, E) is None

    report = close_epoch(world.economy, E)
    check_two_nodes(world, nodes, report)
    before = snapshot(world.engine)
    assert close_epoch(world.economy, E) == report
    assert close_epoch(graced, E) == report
    assert snapshot(world.engine) == before
    assert [r["epoch"] for r in close_ended(world.economy)] == [E + 1]
    after = snapshot(world.engine)
    assert close_ended(world.economy) == []
    assert snapshot(world.engine) == after


def test_a_late_close_ignores_everything_dated_after_the_end(world: World) -> None:
    nodes = two_nodes(world)
    late, buyer = Wallet.create(), Wallet.create()
    key_id = CreditLedger(world.engine).create_key("late")[0]
    world.at(END + 600_000)  # in E+1: more minting, stake, unstaking, points, uptime, fees and a bribe
    world.economy.genesis({late.address: 50_000 * ONE, buyer.address: 100 * ONE})
    world.stake(late, nodes.a, 50_000 * ONE)
    world.act(nodes.b, Unstake, account=nodes.b.address, node=nodes.b.address, token="HUE", amount=30_000 * ONE)
    world.act(buyer, FundKey, account=buyer.address, key_id=key_id, amount=2_000 * MICRO * (BASE0 + MINER))
    world.act(nodes.a, SetBribe, node=nodes.a.address, bps=10_000)
    world.points(nodes.b, 5_000_000, END + 1)
    world.uptime(nodes.a, E + 1, 120)
    world.uptime(nodes.b, E + 1, 120)
    world.at(END + 10 * H)
    report = close_epoch(world.economy, E)
    check_two_nodes(world, nodes, report)  # the same digits as the on-time close
    assert report["next_base_fee"] == str((BASE0 - BASE0 // 8) * MICRO)  # E bought nothing: -1/8


def test_units_bought_before_the_previous_close_pay_the_base_fee_their_report_states(world: World) -> None:
    """E's purchases are final once E ends, so E+1's base fee is known before E is closed: an early buyer pays it
    (before the fix, such a purchase paid E's fee while E+1's report stated another)."""
    buyer = Wallet.create()
    key_id = CreditLedger(world.engine).create_key("early")[0]
    world.economy.genesis({buyer.address: 100 * ONE})
    world.at(END + 1_000)  # in E+1, E not closed yet (any time within the grace, or until a cron runs the close)
    world.act(buyer, FundKey, account=buyer.address, key_id=key_id, amount=100 * MICRO * (BASE0 + MINER))
    world.at(END + H)
    assert close_epoch(world.economy, E)["next_base_fee"] == str((BASE0 - BASE0 // 8) * MICRO)
    report = close_epoch(world.economy, E + 1)
    base = BASE0 - BASE0 // 8  # E bought nothing: E+1's fee is 1/8 lower, and that is what the buyer paid
    bought = 100 * MICRO * (BASE0 + MINER) // (base + MINER)  # micro-units: a little more than 100 units
    assert report["base_fee"] == str(base * MICRO) and int(report["burned"]) == bought * base


def test_an_epoch_before_the_book_cannot_be_closed(world: World) -> None:
    """A mistyped `heurist epoch close 5` must not become the first close (it would leave every epoch since to
    close in order)."""
    world.economy.genesis({Wallet.create().address: ONE})
    world.at(END + H)
    with pytest.raises(EconomyError, match=r"^epoch: 5 is before the book.s first epoch"):
        close_epoch(world.economy, 5)
    assert close_epoch(world.economy, E)["epoch"] == E


def test_two_closes_of_one_epoch_at_once_store_one(world: World) -> None:
    """Two operators (or a cron and a person) close the same epoch at the same moment: one close is stored, both
    get its report, and the rewards are paid once."""
    n = two_nodes(world)
    world.at(END + H)
    barrier, reports, errors = threading.Barrier(2), [], []

    def close() -> None:
        barrier.wait()
        try:
            reports.append(close_epoch(world.economy, E))
        except Exception as err:  # the assertion below names it
            errors.append(err)

    threads = [threading.Thread(target=close) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(reports) == 2 and reports[0] == reports[1]
    check_two_nodes(world, n, reports[0])
    with session_scope(world.engine) as session:
        assert session.scalar(select(func.count()).select_from(Tx).where(Tx.key == f"epoch:{E}")) == 1
