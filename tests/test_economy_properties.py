"""Random sequences of every economy action on a real database (SQLite and PostgreSQL), against a model.

A Hypothesis ``RuleBasedStateMachine`` drives one ``Economy`` through genesis, esHUE grants (minted liquid esHUE),
stake, unstake (HUE: a 30-day lock; esHUE: at once), move-stake, withdraw, vest, claim, set-bribe, fund-key,
time moving (to the millisecond around every unlock and vesting point), replays, forgeries and overdraws. A plain
Python model predicts every balance and every refusal; after every step:

* no balance below zero (the mint account alone is negative: minus what was minted);
* supply (minted - burned) <= the cap of 1,000,000,000 HUE;
* conservation: minted - burned = liquid + staked + locked + vesting + unclaimed fees;
* every account's cached balance = the sum of its legs, and every transaction's legs sum to zero;
* the model's balances, lock times, vesting schedules, credit balances and bribes are the book's;
* every API key's credit balance = the sum of its credit entries;
* a refused action changed nothing: no row added to any economy or credit table (an in-place change would
  break the two checks above).

Lock and vesting are checked at their exact boundaries: unstaked HUE is refused at ``unlock_at - 1 ms`` and
withdrawable at ``unlock_at``; a claim gives exactly ``total x elapsed // period`` less what was claimed.

Epoch closes run too (30-day epochs, ``close_ended`` or ``close_epoch`` one by one): nodes earn points and uptime
slots (``work``), and each report of the example's epochs is checked against the model: every node's
time-weighted stake and bribe (the one set before the epoch); no reward to a node below the 10,000 HUE activation
or without points or uptime, and a reward to every other; each staker's share of the bribe, pro rata to
stake-time with esHUE weighted 1.5x, floored, the rest to the operator, all compounded as esHUE stake; the base
fee stepping at most 1/8 per epoch toward the target (EIP-1559), what was burned and bought; Merkle leaves = what
each address was paid = issued + fees paid out. A second close returns the same reports and changes nothing.

Every example gets new wallets and nodes on the test's one migrated database (a new PostgreSQL database per
example costs ~2 s). Its clock starts a day into the epoch after the previous example's last, and it first
closes the earlier examples' epochs, so time never runs backwards in one database (epochs close in order) and
the epochs it closes later are its own. 15 examples x 30 steps take 10-25 s a database. A failure found late
may be reported as ``Flaky`` on replay (earlier examples changed the shared database); the original error is
printed above it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import Engine, func, select

from heurist.credits.ledger import CreditLedger
from heurist.db.engine import session_scope
from heurist.economy.actions import (
    Action,
    Claim,
    EconomyDomain,
    FundKey,
    MoveStake,
    SetBribe,
    Signed,
    Stake,
    Unstake,
    Vest,
    Withdraw,
)
from heurist.economy.amounts import ONE
from heurist.economy.book import CapError, EconomyError, OverdrawError
from heurist.economy.config import CAP, MICRO, Rules
from heurist.economy.epochs import close_ended, close_epoch
from heurist.economy.handlers import when
from heurist.economy.rewards import next_base_fee
from heurist.economy.service import Economy, Receipt
from heurist.economy.tables import AccountKind, Epoch, Tx
from heurist.identity import Wallet
from tests.fixtures.economy import (
    DAY_MS,
    T0_MS,
    AccountKey,
    Book,
    BookReader,
    MsClock,
    add_node,
    add_work,
    check_book,
    grant_eshue,
    row_counts,
)

RULES = Rules(epoch_s=30 * 86_400)  # 30-day epochs: a vesting year closes in 13
LOCK_MS, VEST_MS = RULES.unstake_lock_s * 1000, RULES.vesting_s * 1000
USERS, NODES = 3, 2
ACTORS = USERS + NODES  # nodes stake too (their own stake)
TOKENS = ("HUE", "esHUE")
SETTINGS = settings(max_examples=15, stateful_step_count=30, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])



who = st.integers(0, ACTORS - 1)
node_ix = st.integers(0, NODES - 1)
choice = st.integers(0, 1000)  # picks among what exists when the rule runs (positions, locks, vests)
token = st.sampled_from(TOKENS)
# How much an action asks for, relative to what the model says is there: all of it, more, a part, the minimum
# stake, just under it, one base unit.
amounts = st.tuples(st.sampled_from(("part", "all", "part", "min", "part", "over", "below_min", "one")),
                    st.integers(1, 999))
Pick = tuple[str, int]


@dataclass
class Lock:
    key: AccountKey
    owner: str
    unlock_at: int


@dataclass
class Vesting:
    key: AccountKey
    owner: str
    total: int
    start: int
    end: int

    def vested(self, now: int) -> int:
        return self.total * (min(max(now - self.start, 0), self.end - self.start)) // (self.end - self.start)


def liquid_key(owner: str, tok: str = "HUE") -> AccountKey:
    return AccountKind.LIQUID.value, tok, owner, "", ""


def stake_key(owner: str, node: str, tok: str) -> AccountKey:
    return AccountKind.STAKE.value, tok, owner, node, ""


class EconomyMachine(RuleBasedStateMachine):
    """One example: new wallets and nodes, a model of their accounts, the shared database."""

    def __init__(self, reader: BookReader, start: list[int]) -> None:
        super().__init__()
        self.engine, self.reader, self.start = reader.engine, reader, start
        self.clock = MsClock(start[0])
        self.eco = Economy(self.engine, RULES, EconomyDomain(), clock=self.clock)
        self.nodes = [add_node(self.engine) for _ in range(NODES)]
        self.wallets = [Wallet.create() for _ in range(USERS)] + self.nodes
        self.owners = {w.address for w in self.wallets}
        ledger = CreditLedger(self.engine)
        self.keys = [ledger.create_key(f"econ-{i}")[0] for i in range(3)]
        ledger.set_disabled(self.keys[2], True)
        self.bal: dict[AccountKey, int] = {}
        self.locks: list[Lock] = []
        self.vests: list[Vesting] = []
        self.credits = dict.fromkeys(self.keys, 0)
        self.bribes: dict[str, list[tuple[int, int]]] = {n.address: [] for n in self.nodes}
        self.genesised: set[str] = set()
        self.nonces: dict[str, int] = {}
        self.used: dict[str, set[int]] = {}
        self.accepted: list[Signed] = []
        self.stake_log: list[tuple[int, str, str, str, int]] = []  # (at_ms, node, owner, token, change) on our nodes
        self.points: dict[tuple[str, int], int] = {}  # (node, epoch) -> micro-points
        self.slots: dict[tuple[str, int], int] = {}
        close_ended(self.eco)  # earlier examples' epochs: the epochs this example closes are its own
        self.minted = self.burned = self.fees = 0
        self._rebase(self.reader.read())
        price = self.eco.unit_price()
        # The base fee in this example's first epoch (no one else buys in it: examples start in a new epoch); from
        # there on the model steps it itself, epoch by epoch, from what this example buys.
        self.first_epoch = RULES.epoch_of(self.clock.now_ms)
        self.first_fee, self.miner_fee = price["base_fee"] // MICRO, price["miner_fee"] // MICRO
        self.units: dict[int, int] = {}  # epoch -> credit micro-units bought in it
        self.burned_in: dict[int, int] = {}  # epoch -> base fees burned in it

    def _rebase(self, book: Book) -> None:
        self.base = {kind: book.system(kind) for kind in (AccountKind.MINT, AccountKind.BURN, AccountKind.FEES)}
        self.credit_base = {k: book.credit_balances[k] - self.credits[k] for k in self.keys}
        self.minted = self.burned = self.fees = 0

    def teardown(self) -> None:
        """The next example starts a day into the epoch after this one's last."""
        self.start[0] = RULES.epoch_bounds(RULES.epoch_of(self.clock.now_ms) + 1)[0] + DAY_MS

    # ---------------------------------------------------------------------------------------------- helpers

    def add(self, key: AccountKey, delta: int) -> None:
        self.bal[key] = self.bal.get(key, 0) + delta

    def get(self, key: AccountKey) -> int:
        return self.bal.get(key, 0)

    def pick(self, p: Pick, base: int) -> int:
        mode, x = p
        value = {"all": base, "over": base + x, "part": base * x // 1000, "min": RULES.min_stake,
                 "below_min": RULES.min_stake - x, "one": 1}[mode]
        return max(value, 1)

    def position(self, j: int) -> tuple[int, int, str]:
        """A stake position someone holds (actor, node, token), else any (then the action is refused)."""
        held = sorted((i, n, tok) for i, w in enumerate(self.wallets) for n, node in enumerate(self.nodes)
                      for tok in TOKENS if self.get(stake_key(w.address, node.address, tok)))
        return held[j % len(held)] if held else (j % ACTORS, j % NODES, TOKENS[j % 2])

    def holder(self, j: int, owners: list[str]) -> int:
        """The index of one of ``owners`` (an actor with locks, or vests), else any actor."""
        addresses = [w.address for w in self.wallets]
        return addresses.index(owners[j % len(owners)]) if owners else j % ACTORS

    def nonce(self, address: str) -> int:
        n = self.nonces.get(address, 0)
        self.nonces[address] = n + 1
        return n

    def sign(self, wallet: Wallet, cls: type[Action], **fields: Any) -> Signed:
        action = cls(nonce=self.nonce(wallet.address), **fields)
        return self.eco.domain.sign(wallet, action)

    def accept(self, signed: Signed) -> Receipt:
        receipt = self.eco.apply(signed)
        self.accepted.append(signed)
        self.used.setdefault(receipt.signer, set()).add(int(signed.message["nonce"]))
        return receipt

    def refuse(self, signed: Signed, error: type[EconomyError], *needles: str) -> None:
        """``signed`` is refused with ``error`` naming ``needles``, and nothing at all changed."""
        before = row_counts(self.engine)
        with pytest.raises(error) as info:
            self.eco.apply(signed)
        for needle in needles:
            assert needle in str(info.value), (needle, str(info.value))
        assert row_counts(self.engine) == before, f"a refused {signed.type} changed the book"

    def matured(self, owner: str, now: int) -> list[Lock]:
        return [lock for lock in self.locks if lock.owner == owner and lock.unlock_at <= now and self.get(lock.key)]

    def claimable(self, v: Vesting, now: int) -> int:
        return v.vested(now) - (v.total - self.get(v.key))

    def bribe_at(self, node: str, epoch: int) -> int:
        effective = [bps for bps, start in self.bribes[node] if start <= epoch]
        return effective[-1] if effective else 0

    # ---------------------------------------------------------------------------------------------- rules

    @initialize(hue_=st.lists(st.integers(1, 60_000), min_size=ACTORS, max_size=ACTORS),
                eshue=st.lists(st.integers(0, 30_000), min_size=ACTORS, max_size=ACTORS),
                own=amounts, delegated=amounts, bribe=st.sampled_from((2_500, 5_000, 10_000, 0)))
    def fund_everyone(self, hue_: list[int], eshue: list[int], own: Pick, delegated: Pick, bribe: int) -> None:
        """Every actor starts with genesis HUE and most with esHUE; node 0 stakes all its HUE on itself (at
        least 20,000: active) and shares ``bribe`` of its rewards from the next epoch on, user 0 delegates esHUE
        to it, and node 1 stakes some HUE on itself (maybe below activation). So most sequences move money, and
        epochs reward an active node, HUE and esHUE stakers, and perhaps skip an inactive one."""
        for i, (whole, es) in enumerate(zip(hue_, eshue, strict=True)):
            self.genesis(i, whole + (20_000 if i >= USERS else 0), 0)
            if es:
                self.grant(i, es)
        self.stake(USERS, 0, "HUE", ("all", 0))
        self.stake(0, 0, "esHUE", delegated)
        self.stake(USERS + 1, 1, "HUE", own)
        self.set_bribe(0, bribe, False)
        for n in range(NODES):  # both nodes serve jobs in this epoch and the next
            self.work(n, 1_000_000, RULES.slots_per_epoch // 2)
            self.work(n, 2_000_000, RULES.slots_per_epoch, RULES.epoch_bounds(self.first_epoch + 1)[0])

    @rule(i=who, whole=st.integers(1, 100_000), dust=st.integers(0, ONE - 1))
    def genesis(self, i: int, whole: int, dust: int) -> None:
        address, amount = self.wallets[i].address, whole * ONE + dust
        before = row_counts(self.engine)
        if address not in self.genesised and self.eco.minted() + amount > CAP:
            with pytest.raises(CapError):
                self.eco.genesis({address: amount})
            assert row_counts(self.engine) == before
            return
        minted = self.eco.genesis({address.lower(): amount})
        if address in self.genesised:  # once per address: a repeat is skipped
            assert minted == []
            assert row_counts(self.engine) == before
            return
        assert minted == [address]
        self.genesised.add(address)
        self.add(liquid_key(address), amount)
        self.minted += amount

    @rule(over=st.integers(1, 10**24))
    def genesis_past_cap(self, over: int) -> None:
        book = self.reader.read()
        supply = -book.total(AccountKind.MINT) - book.total(AccountKind.BURN)
        before = row_counts(self.engine)
        with pytest.raises(CapError, match="cap"):
            self.eco.genesis({Wallet.create().address: CAP - supply + over})
        assert row_counts(self.engine) == before

    @rule(i=who, whole=st.integers(1, 50_000))
    def grant(self, i: int, whole: int) -> None:
        """Minted liquid esHUE (epoch rewards pay esHUE, but as stake on a node)."""
        address = self.wallets[i].address
        if self.eco.minted() + whole * ONE > CAP:
            return
        grant_eshue(self.engine, address, whole * ONE, self.clock.now_ms, RULES.epoch_of(self.clock.now_ms))
        self.add(liquid_key(address, "esHUE"), whole * ONE)
        self.minted += whole * ONE

    @rule(i=who, n=node_ix, tok=token, p=amounts)
    def stake(self, i: int, n: int, tok: str, p: Pick) -> None:
        wallet, node = self.wallets[i], self.nodes[n].address
        have = self.get(liquid_key(wallet.address, tok))
        amount = self.pick(p, have)
        signed = self.sign(wallet, Stake, account=wallet.address, node=node, token=tok, amount=amount)
        if amount < RULES.min_stake:
            self.refuse(signed, EconomyError, "amount:", "minimum stake")
        elif amount > have:
            self.refuse(signed, OverdrawError, "amount:")
        else:
            self.accept(signed)
            self.add(liquid_key(wallet.address, tok), -amount)
            self.add(stake_key(wallet.address, node, tok), amount)
            self.stake_log.append((self.clock.now_ms, node, wallet.address, tok, amount))

    @rule(i=who)
    def stake_on_unknown_node(self, i: int) -> None:
        wallet = self.wallets[i]
        signed = self.sign(wallet, Stake, account=wallet.address, node=Wallet.create().address, token="HUE",
                           amount=RULES.min_stake)
        self.refuse(signed, EconomyError, "node:", "not a miner node")

    @rule(j=choice, p=amounts, wait=st.booleans())
    def unstake(self, j: int, p: Pick, wait: bool) -> None:
        """``wait``: then try to withdraw the unstaked HUE one millisecond before its lock ends, and at the end."""
        i, n, tok = self.position(j)
        wallet, node = self.wallets[i], self.nodes[n].address
        have = self.get(stake_key(wallet.address, node, tok))
        amount = self.pick(p, have)
        signed = self.sign(wallet, Unstake, account=wallet.address, node=node, token=tok, amount=amount)
        if amount > have:
            self.refuse(signed, OverdrawError, "amount:")
            return
        receipt = self.accept(signed)
        self.add(stake_key(wallet.address, node, tok), -amount)
        self.stake_log.append((self.clock.now_ms, node, wallet.address, tok, -amount))
        if tok == "esHUE":  # immediate
            self.add(liquid_key(wallet.address, tok), amount)
            return
        unlock_at = self.clock.now_ms + LOCK_MS
        assert receipt.effects["unlock_at"] == when(unlock_at)
        lock = Lock((AccountKind.LOCK.value, "HUE", wallet.address, node, receipt.key), wallet.address, unlock_at)
        self.locks.append(lock)
        self.add(lock.key, amount)
        if wait:
            self._withdraw_at_unlock(lock)

    @rule(j=choice, same=st.integers(0, 7), p=amounts)
    def move_stake(self, j: int, same: int, p: Pick) -> None:
        i, a, tok = self.position(j)
        b = a if same == 7 else (a + 1) % NODES
        wallet, source, target = self.wallets[i], self.nodes[a].address, self.nodes[b].address
        have = self.get(stake_key(wallet.address, source, tok))
        amount = self.pick(p, have)
        signed = self.sign(wallet, MoveStake, account=wallet.address, from_node=source, to_node=target, token=tok,
                           amount=amount)
        if a == b:
            self.refuse(signed, EconomyError, "to_node:")
        elif amount > have:
            self.refuse(signed, OverdrawError, "amount:")
        else:  # instant, no lock, either token
            self.accept(signed)
            self.add(stake_key(wallet.address, source, tok), -amount)
            self.add(stake_key(wallet.address, target, tok), amount)
            self.stake_log += [(self.clock.now_ms, source, wallet.address, tok, -amount),
                               (self.clock.now_ms, target, wallet.address, tok, amount)]

    @rule(j=choice, p=amounts)
    def withdraw(self, j: int, p: Pick) -> None:
        wallet = self.wallets[self.holder(j, [lock.owner for lock in self.locks if self.get(lock.key)])]
        free = sum(self.get(lock.key) for lock in self.matured(wallet.address, self.clock.now_ms))
        self._withdraw(wallet, self.pick(p, free))

    def _withdraw(self, wallet: Wallet, amount: int) -> None:
        owner, now = wallet.address, self.clock.now_ms
        ready = self.matured(owner, now)
        free = sum(self.get(lock.key) for lock in ready)
        signed = self.sign(wallet, Withdraw, account=owner, amount=amount)
        if amount > free:
            waiting = sorted((lock for lock in self.locks if lock.owner == owner and lock.unlock_at > now
                              and self.get(lock.key)), key=lambda lock: lock.unlock_at)
            needles = ["amount:"] + ([f"unlocks at {when(waiting[0].unlock_at)}"] if waiting else [])
            self.refuse(signed, EconomyError, *needles)
            return
        self.accept(signed)
        left = amount
        for lock in ready:  # oldest lock first
            take = min(left, self.get(lock.key))
            self.add(lock.key, -take)
            left -= take
        self.add(liquid_key(owner), amount)

    @precondition(lambda self: any(lock.unlock_at - 1 >= self.clock.now_ms and self.get(lock.key)
                                   for lock in self.locks))
    @rule(j=st.integers(0, 100))
    def withdraw_at_unlock(self, j: int) -> None:
        """The lock's exact boundary: refused one millisecond before ``unlock_at``, withdrawable at it."""
        pending = [lock for lock in self.locks if lock.unlock_at - 1 >= self.clock.now_ms and self.get(lock.key)]
        self._withdraw_at_unlock(pending[j % len(pending)])

    def _withdraw_at_unlock(self, lock: Lock) -> None:
        wallet = next(w for w in self.wallets if w.address == lock.owner)
        amount = sum(self.get(other.key) for other in self.matured(lock.owner, lock.unlock_at))
        self.clock.now_ms = lock.unlock_at - 1
        self._withdraw(wallet, amount)  # the model expects a refusal naming lock.unlock_at
        assert amount > sum(self.get(other.key) for other in self.matured(lock.owner, self.clock.now_ms))
        self.clock.now_ms = lock.unlock_at
        self._withdraw(wallet, amount)

    @rule(i=who, p=amounts, then=st.sampled_from((None, "start", "1ms", "half", "end-1", "end")))
    def vest(self, i: int, p: Pick, then: str | None) -> None:
        """``then``: claim at once, 1 ms later, or at a later point of the schedule."""
        wallet = self.wallets[i]
        have = self.get(liquid_key(wallet.address, "esHUE"))
        amount = self.pick(p, have)
        signed = self.sign(wallet, Vest, account=wallet.address, amount=amount)
        if amount > have:
            self.refuse(signed, OverdrawError, "amount:")
            return
        receipt = self.accept(signed)
        now = self.clock.now_ms
        assert receipt.effects["vested_by"] == when(now + VEST_MS)
        v = Vesting((AccountKind.VEST.value, "esHUE", wallet.address, "", receipt.key), wallet.address, amount, now,
                    now + VEST_MS)
        self.vests.append(v)
        self.add(liquid_key(wallet.address, "esHUE"), -amount)
        self.add(v.key, amount)
        if then:
            self._claim_at(v, then)

    @rule(j=choice)
    def claim_any(self, j: int) -> None:
        self.claim(self.holder(j, [v.owner for v in self.vests]))

    def claim(self, i: int) -> None:
        wallet, now = self.wallets[i], self.clock.now_ms
        due = [(v, self.claimable(v, now)) for v in self.vests if v.owner == wallet.address]
        total = sum(c for _, c in due)
        signed = self.sign(wallet, Claim, account=wallet.address)
        if not total:
            self.refuse(signed, EconomyError, "account:", "no vested HUE")
            return
        receipt = self.accept(signed)
        assert int(receipt.effects["claimed"]) == total
        for v, c in due:
            self.add(v.key, -c)
        self.add(liquid_key(wallet.address), total)

    @precondition(lambda self: bool(self.vests))
    @rule(j=st.integers(0, 100), point=st.sampled_from(("quarter", "half", "end-1", "end", "after")))
    def claim_at_vesting_point(self, j: int, point: str) -> None:
        self._claim_at(self.vests[j % len(self.vests)], point)

    def _claim_at(self, v: Vesting, point: str) -> None:
        at = {"start": v.start, "1ms": v.start + 1, "quarter": v.start + VEST_MS // 4,
              "half": v.start + VEST_MS // 2, "end-1": v.end - 1, "end": v.end,
              "after": v.end + DAY_MS}[point]
        self.clock.now_ms = max(self.clock.now_ms, at)
        self.claim([w.address for w in self.wallets].index(v.owner))

    @rule(n=node_ix, bps=st.one_of(st.sampled_from((0, 1, 2_500, 9_999, 10_000, 10_001, 65_536)),
                                   st.integers(0, 12_000)), by_user=st.booleans())
    def set_bribe(self, n: int, bps: int, by_user: bool) -> None:
        wallet = self.wallets[n] if by_user else self.nodes[n]  # a user is not a node
        signed = self.sign(wallet, SetBribe, node=wallet.address, bps=bps)
        if not 0 <= bps <= 10_000:
            self.refuse(signed, EconomyError, "bps:")
        elif by_user:
            self.refuse(signed, EconomyError, "node:", "not a miner node")
        else:
            epoch = RULES.epoch_of(self.clock.now_ms)
            receipt = self.accept(signed)
            assert receipt.effects["effective_epoch"] == epoch + 1
            self.bribes[wallet.address].append((bps, epoch + 1))
            assert self.eco.bribe(wallet.address, epoch) == self.bribe_at(wallet.address, epoch)
            assert self.eco.bribe(wallet.address, epoch + 1) == bps

    @rule(i=who, k=st.integers(0, 2), p=amounts)
    def fund_key(self, i: int, k: int, p: Pick) -> None:
        wallet, key_id = self.wallets[i], self.keys[k]
        have = self.get(liquid_key(wallet.address))
        amount = self.pick(p, have)
        epoch = RULES.epoch_of(self.clock.now_ms)
        base = self.base_fee(epoch)
        assert self.eco.unit_price() == {"base_fee": base * MICRO, "miner_fee": self.miner_fee * MICRO}
        price = base + self.miner_fee
        micro = amount // price
        signed = self.sign(wallet, FundKey, account=wallet.address, key_id=key_id, amount=amount)
        if k == 2:
            self.refuse(signed, EconomyError, "key_id:")
        elif micro == 0:
            self.refuse(signed, EconomyError, "amount:", "buys nothing")
        elif micro * price > have:
            self.refuse(signed, OverdrawError, "amount:")
        else:
            receipt = self.accept(signed)
            assert receipt.effects["micro_units"] == micro
            assert int(receipt.effects["spent"]) == micro * price <= amount
            self.add(liquid_key(wallet.address), -micro * price)
            self.burned += micro * base
            self.fees += micro * self.miner_fee
            self.units[epoch] = self.units.get(epoch, 0) + micro
            self.burned_in[epoch] = self.burned_in.get(epoch, 0) + micro * base
            self.credits[key_id] += micro

    @rule(ms=st.one_of(st.integers(1, 1000), st.integers(1, 45 * DAY_MS)), serve=st.sampled_from((0, 1, 2, 3)))
    def advance(self, ms: int, serve: int) -> None:
        """Time passes; meanwhile node ``serve`` (0 or 1; 2: both, 3: neither) serves jobs in the current epoch."""
        for n in {0: [0], 1: [1], 2: [0, 1], 3: []}[serve]:
            self.work(n, 1_000_000 * (n + 1), RULES.slots_per_epoch // (n + 1))
        self.clock.now_ms += ms

    @precondition(lambda self: bool(self.locks or self.vests))
    @rule(j=st.integers(0, 100), delta=st.sampled_from((-1, 0, 1)))
    def advance_to_boundary(self, j: int, delta: int) -> None:
        points = [lock.unlock_at for lock in self.locks] + [p for v in self.vests
                                                             for p in (v.start + VEST_MS // 2, v.end)]
        self.clock.now_ms = max(self.clock.now_ms, points[j % len(points)] + delta)

    @precondition(lambda self: bool(self.accepted))
    @rule(j=st.integers(0, 1000))
    def replay(self, j: int) -> None:
        signed = self.accepted[j % len(self.accepted)]
        self.refuse(signed, EconomyError, f"nonce: {signed.message['nonce']} was already used")
        signer = self.eco.domain.verify(signed).signer
        assert self.eco.next_nonce(signer) == max(self.used[signer]) + 1

    @rule(i=who, forger=who, how=st.sampled_from(("other_key", "tampered", "other_chain", "other_type")))
    def forge(self, i: int, forger: int, how: str) -> None:
        victim, attacker = self.wallets[i], self.wallets[forger]
        if attacker is victim:
            attacker = Wallet.create()
        action = Stake(account=victim.address, node=self.nodes[0].address, token="HUE", amount=RULES.min_stake,
                       nonce=self.nonce(victim.address))
        if how == "other_key":
            signed = self.eco.domain.sign(attacker, action)
        elif how == "other_chain":
            signed = EconomyDomain(chain_id=1).sign(victim, action)
        else:
            honest = self.eco.domain.sign(victim, action)
            message = {**honest.message, "amount": str(action.amount + 1)} if how == "tampered" else honest.message
            signed = Signed(type="Unstake" if how == "other_type" else "Stake", message=message,
                            signature=honest.signature)
        self.refuse(signed, EconomyError, "signature:")

    # ---------------------------------------------------------------------------------------------- epochs

    @rule(n=node_ix, micro=st.integers(1, 10**9), slots=st.integers(1, RULES.slots_per_epoch))
    def work(self, n: int, micro: int, slots: int, at_ms: int | None = None) -> None:
        """The node serves jobs: credited points now (or at ``at_ms``) and heartbeat slots in that epoch."""
        at = self.clock.now_ms if at_ms is None else at_ms
        node, epoch = self.nodes[n].address, RULES.epoch_of(at)
        add_work(self.engine, node, micro, slots, epoch, at)
        self.points[(node, epoch)] = self.points.get((node, epoch), 0) + micro
        self.slots[(node, epoch)] = self.slots.get((node, epoch), 0) + slots

    def stake_times(self, node: str, epoch: int) -> dict[tuple[str, str], int]:
        """Each (staker, token)'s stake x ms held on the node within the epoch, from the model's log."""
        start, end = RULES.epoch_bounds(epoch)
        times: dict[tuple[str, str], int] = {}
        for at, n, owner, tok, change in self.stake_log:
            if n == node and at < end:
                times[(owner, tok)] = times.get((owner, tok), 0) + change * (end - max(at, start))
        return {k: v for k, v in times.items() if v > 0}

    def avg_stake(self, node: str, epoch: int) -> int:
        """The node's time-weighted average stake over the epoch (both tokens, own and delegated)."""
        start, end = RULES.epoch_bounds(epoch)
        return sum(self.stake_times(node, epoch).values()) // (end - start)

    def staker_rewards(self, node: str, epoch: int, reward: int) -> dict[tuple[str, str], int]:
        """The bribe's share of ``reward`` for each (staker, token): pro rata to stake-time, esHUE's weighted by
        the multiplier (1.5x), each share floored (the remainder is the operator's)."""
        bribe = reward * self.bribe_at(node, epoch) // 10_000
        weights = {k: t * (RULES.eshue_multiplier_bps if k[1] == "esHUE" else 10_000)
                   for k, t in self.stake_times(node, epoch).items()}
        whole = sum(weights.values())
        shares = {k: bribe * w // whole for k, w in weights.items()} if whole else {}
        return {k: v for k, v in shares.items() if v > 0}

    @rule(some=st.sampled_from(("wait", None, 1, 2)))
    def close_epochs(self, some: int | str | None) -> None:
        """Close every ended epoch (``close_ended``, as ``heurist epoch close`` does; "wait": first wait for this
        epoch to end) or only the ``some`` oldest open ones (``close_epoch``, one by one), check each report
        against the model, then close them again: the same reports, and nothing changes."""
        if some == "wait":
            end = RULES.epoch_bounds(RULES.epoch_of(self.clock.now_ms))[1]
            self.clock.now_ms = end + int(RULES.close_grace_s * 1000)
            some = None
        if some is None:
            reports = close_ended(self.eco)
        else:
            last = self.eco.rules.epoch_of(self.clock.now_ms - int(RULES.close_grace_s * 1000)) - 1
            reports = []
            for epoch in range(self._next_open(), last + 1)[:int(some)]:
                reports.append(close_epoch(self.eco, epoch))
        for report in reports:
            self._settle(report)
        before = row_counts(self.engine)
        assert [close_epoch(self.eco, r["epoch"]) for r in reports] == reports
        if some is None:
            assert close_ended(self.eco) == []
        assert row_counts(self.engine) == before, "a second close changed the book"

    def _next_open(self) -> int:
        """The oldest epoch not closed yet (epochs close in order from the book's first)."""
        with session_scope(self.engine) as session:
            last = session.scalar(select(func.max(Epoch.epoch)))
            first = session.scalar(select(func.min(Tx.at_ms)))
        if last is not None:
            return int(last) + 1
        assert first is not None  # the machine's own genesis is in the book
        return RULES.epoch_of(int(first))

    def base_fee(self, epoch: int) -> int:
        """The base fee per micro-unit in ``epoch``: EIP-1559's step from this example's first epoch on, each
        moving at most 1/8 toward the target of units bought per epoch."""
        fee = self.first_fee
        for n in range(self.first_epoch, epoch):
            used, target = self.units.get(n, 0), RULES.target_micro_units
            after = next_base_fee(fee, used, target)
            assert abs(after - fee) <= max(fee // 8, 1) and after >= 1
            assert (after > fee) if used > target else (after <= fee) if used < target else (after == fee)
            fee = after
        return fee

    def _settle(self, report: dict[str, Any]) -> None:
        epoch, end = report["epoch"], RULES.epoch_bounds(report["epoch"])[1]
        if epoch >= self.first_epoch:  # this example's epochs: fees and units are all the model's
            assert int(report["base_fee"]) == self.base_fee(epoch) * MICRO
            assert int(report["next_base_fee"]) == self.base_fee(epoch + 1) * MICRO
            assert int(report["burned"]) == self.burned_in.get(epoch, 0)
            assert report["units"] == self.units.get(epoch, 0) / MICRO
        issued, from_fees = int(report["issued"]), int(report["fees_to_miners"])
        assert sum(int(p["amount"]) for p in report["payouts"]) == issued + from_fees
        self.minted += issued
        self.fees -= from_fees
        listed = {entry["node"]: entry for entry in report["nodes"]}
        rewards: dict[str, tuple[int, dict[tuple[str, str], int]]] = {}
        for node in self.bribes:  # this example's nodes
            points, slots = self.points.get((node, epoch), 0), self.slots.get((node, epoch), 0)
            avg = self.avg_stake(node, epoch)
            if node not in listed:
                assert not points and not avg, f"node {node} missing from epoch {epoch}'s report"
                continue
            entry = listed[node]
            reward, to_stakers, to_operator = (int(entry[k]) for k in ("reward", "to_stakers", "to_operator"))
            assert int(entry["stake"]) == avg
            assert entry["bribe_bps"] == self.bribe_at(node, epoch)
            if avg < RULES.activation or not points or not slots:
                assert reward == 0, f"inactive node {node} (stake {avg}) was rewarded {reward} in epoch {epoch}"
            else:
                assert reward > 0, f"active node {node} earned nothing in epoch {epoch}"
            shares = self.staker_rewards(node, epoch, reward)
            reported = {(st_["address"], st_["token"]): int(st_["reward"]) for st_ in report["stakers"]
                        if st_["node"] == node}
            assert reported == shares, f"stakers of {node} in epoch {epoch}"
            assert to_stakers == sum(shares.values()) and to_operator == reward - to_stakers
            rewards[node] = (to_operator, shares)
        paid: dict[str, int] = {}
        for node, (to_operator, shares) in rewards.items():  # all compounded as esHUE stake at the epoch's end
            for (owner, _), amount in [*shares.items(), ((node, "esHUE"), to_operator)]:
                if amount:
                    self.add(stake_key(owner, node, "esHUE"), amount)
                    self.stake_log.append((end, node, owner, "esHUE", amount))
                    paid[owner] = paid.get(owner, 0) + amount
        leaves = {p["address"]: int(p["amount"]) for p in report["payouts"]}
        for address, amount in paid.items():
            assert leaves.get(address, 0) == amount, f"{address}'s leaf in epoch {epoch}"

    # ---------------------------------------------------------------------------------------------- invariants

    @invariant()
    def books_agree(self) -> None:
        assert self.eco.now_ms() == self.clock.now_ms
        book = self.reader.read()
        check_book(book, CAP)
        ours = {k: v for k, v in book.by_key.items() if k[2] in self.owners and v}
        assert ours == {k: v for k, v in self.bal.items() if v}
        assert book.system(AccountKind.MINT) == self.base[AccountKind.MINT] - self.minted
        assert book.system(AccountKind.BURN) == self.base[AccountKind.BURN] + self.burned
        assert book.system(AccountKind.FEES) == self.base[AccountKind.FEES] + self.fees
        assert {k: book.credit_balances[k] - self.credit_base[k] for k in self.keys} == self.credits
        by_key = {(a.kind.value, a.token.value, a.owner, a.node, a.ref): a for a in book.accounts.values()}
        for lock in self.locks:
            assert by_key[lock.key].unlock_at_ms == lock.unlock_at
        for v in self.vests:
            acc = by_key[v.key]
            assert (acc.vest_total, acc.vest_start_ms, acc.vest_end_ms) == (v.total, v.start, v.end)


def test_random_action_sequences_keep_the_books(engine: Engine) -> None:
    start, reader = [T0_MS], BookReader(engine)  # one reader for all examples: each leg is summed once

    class Bound(EconomyMachine):
        def __init__(self) -> None:
            super().__init__(reader, start)

    run_state_machine_as_test(Bound, settings=SETTINGS)
    assert start[0] > T0_MS  # examples ran (each moves the shared clock on)
