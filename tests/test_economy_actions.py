"""Worked examples of every economy action, with amounts computed by hand, on SQLite and PostgreSQL.

The clock starts at 2030-01-01T00:00:00Z (1,893,456,000,000 ms) and moves by whole milliseconds, so every
boundary below is exact: a 30-day lock opens at 2030-01-31T00:00:00Z and not one millisecond earlier; 1,000 esHUE
vesting over 365 days (31,536,000,000 ms) has released 1000e18 x 1 // 31,536,000,000 = 31,709,791,983 base units
after 1 ms and exactly 500 HUE after 182.5 days. A credit unit costs 0.01 HUE base fee + 0.002 HUE miner fee =
0.012 HUE (12,000,000,000 base units per micro-unit), so 1.2 HUE buys exactly 100 units: 1.0 HUE burned, 0.2 HUE
to the miners' fee pool.

Every refusal is checked to change nothing (the whole book and the credit keys, compared before and after) and
to name the field. The PostgreSQL-only tests race two spends of one balance and two copies of one message.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from heurist.credits.ledger import CreditLedger
from heurist.db.engine import make_engine
from heurist.db.migrate import upgrade
from heurist.economy.actions import (
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
from heurist.economy.amounts import ONE, hue
from heurist.economy.book import CapError, EconomyError, OverdrawError
from heurist.economy.config import CAP, TESTNET_POOL, Rules
from heurist.economy.service import Economy, Receipt
from heurist.economy.tables import AccountKind
from heurist.identity import Wallet
from tests.fixtures.economy import DAY_MS, T0_MS, MsClock, add_node, check_book, grant_eshue, read_book
from tests.fixtures.race import race

RULES = Rules(epoch_s=3600)
LOCK_MS = 30 * DAY_MS
YEAR_MS = 365 * DAY_MS  # 31,536,000,000


@pytest.fixture
def ms_clock() -> MsClock:
    return MsClock(T0_MS)


@pytest.fixture
def eco(engine: Engine, ms_clock: MsClock) -> Iterator[Economy]:
    economy = Economy(engine, RULES, EconomyDomain(), clock=ms_clock)
    yield economy
    check_book(read_book(engine), CAP)  # after every example: no negative balance, conservation, caches = legs


class Signer:
    """A wallet that numbers its own nonces."""

    def __init__(self, economy: Economy, wallet: Wallet | None = None) -> None:
        self.economy, self.wallet, self.next = economy, wallet or Wallet.create(), 0

    @property
    def address(self) -> str:
        return self.wallet.address

    def sign(self, cls: type[Any], **fields: Any) -> Signed:
        if cls is not SetBribe:
            fields.setdefault("account", self.address)
        self.next += 1
        return self.economy.domain.sign(self.wallet, cls(nonce=self.next - 1, **fields))

    def do(self, cls: type[Any], **fields: Any) -> Receipt:
        return self.economy.apply(self.sign(cls, **fields))


def held(engine: Engine, kind: AccountKind, owner: str, token: str = "HUE", node: str = "") -> int:
    """The sum of ``owner``'s accounts of ``kind`` (and ``node``, if given) in ``token``."""
    return sum(a.balance for a in read_book(engine).accounts.values()
               if a.kind is kind and a.owner == owner and a.token.value == token and (not node or a.node == node))


def refused(engine: Engine, action: Callable[[], Any], error: type[Exception], *needles: str) -> str:
    """Run ``action``: it raises ``error`` whose message holds every needle, and the book is unchanged."""
    before = read_book(engine).snapshot()
    with pytest.raises(error) as info:
        action()
    message = str(info.value)
    for needle in needles:
        assert needle in message, (needle, message)
    assert read_book(engine).snapshot() == before
    return message


def test_genesis_mints_once_and_never_past_the_cap(engine: Engine, eco: Economy) -> None:
    a, b, c = (Wallet.create().address for _ in range(3))
    assert eco.genesis({a.lower(): hue(1000)}) == [a]
    assert eco.minted() == 1000 * ONE
    assert held(engine, AccountKind.LIQUID, a) == 1000 * ONE
    before = read_book(engine).snapshot()
    assert eco.genesis({a: hue(5)}) == []  # once per address: a repeat is skipped
    assert read_book(engine).snapshot() == before
    room = CAP - TESTNET_POOL - 1000 * ONE  # genesis leaves the testnet its 50,000,000 HUE: 949,999,000 left
    refused(engine, lambda: eco.genesis({c: ONE, b: room + 1}), CapError, "cap of 950000000 HUE",
            "minted so far")  # all or nothing: c's 1 HUE is not minted either
    assert eco.minted() == 1000 * ONE and held(engine, AccountKind.LIQUID, c) == 0
    assert eco.genesis({b: room}) == [b]  # exactly to the genesis cap
    assert eco.minted() == CAP - TESTNET_POOL == 950_000_000 * ONE
    refused(engine, lambda: eco.genesis({c: 1}), CapError, "cap")
    refused(engine, lambda: eco.genesis({c: 0}), EconomyError, "genesis:", "positive")


def test_stake_refusals_name_the_field(engine: Engine, eco: Economy) -> None:
    node = add_node(engine)
    user = Signer(eco)
    eco.genesis({user.address: hue(100)})
    refused(engine, lambda: user.do(Stake, node=node.address, token="HUE", amount=ONE - 1), EconomyError,
            "amount: 0.999999999999999999 HUE is below the minimum stake of 1")
    stranger = Wallet.create().address
    refused(engine, lambda: user.do(Stake, node=stranger, token="HUE", amount=ONE), EconomyError,
            f"node: {stranger} is not a miner node")
    message = refused(engine, lambda: user.do(Stake, node=node.address, token="HUE", amount=hue("100.5")),
                      OverdrawError)
    assert message == f"amount: {user.address}'s balance holds 100 HUE, 100.5 needed"
    refused(engine, lambda: user.do(Stake, node=node.address, token="esHUE", amount=ONE), OverdrawError,
            "amount:", "holds 0 esHUE")
    user.do(Stake, node=node.address, token="HUE", amount=hue(100))  # the whole balance: fine
    assert held(engine, AccountKind.LIQUID, user.address) == 0
    assert held(engine, AccountKind.STAKE, user.address, node=node.address) == 100 * ONE


def test_unstaked_hue_unlocks_at_exactly_thirty_days(engine: Engine, eco: Economy, ms_clock: MsClock) -> None:
    node = add_node(engine)
    user = Signer(eco)
    eco.genesis({user.address: hue(50)})
    user.do(Stake, node=node.address, token="HUE", amount=hue(50))
    receipt = user.do(Unstake, node=node.address, token="HUE", amount=hue(20))
    assert receipt.effects["unlock_at"] == "2030-01-31T00:00:00+00:00"
    assert held(engine, AccountKind.STAKE, user.address) == 30 * ONE  # the locked 20 HUE is not stake
    assert held(engine, AccountKind.LOCK, user.address) == 20 * ONE
    ms_clock.now_ms = T0_MS + LOCK_MS - 1  # 2030-01-30T23:59:59.999Z
    refused(engine, lambda: user.do(Withdraw, amount=hue(20)), EconomyError,
            "amount: 20 HUE asked, 0 HUE is unlocked; next 20 HUE unlocks at 2030-01-31T00:00:00+00:00")
    ms_clock.now_ms = T0_MS + LOCK_MS
    refused(engine, lambda: user.do(Withdraw, amount=hue(20) + 1), EconomyError, "20 HUE is unlocked")
    user.do(Withdraw, amount=hue(12))
    user.do(Withdraw, amount=hue(8))
    assert held(engine, AccountKind.LIQUID, user.address) == 20 * ONE
    assert held(engine, AccountKind.LOCK, user.address) == 0


def test_eshue_unstakes_at_once_and_stake_moves_instantly(engine: Engine, eco: Economy) -> None:
    first, second = add_node(engine), add_node(engine)
    user = Signer(eco)
    eco.genesis({user.address: hue(100)})
    grant_eshue(engine, user.address, hue(100), T0_MS, RULES.epoch_of(T0_MS))
    for token in ("HUE", "esHUE"):
        user.do(Stake, node=first.address, token=token, amount=hue(60))
        user.do(MoveStake, from_node=first.address, to_node=second.address, token=token, amount=hue(25))
        assert held(engine, AccountKind.STAKE, user.address, token, first.address) == 35 * ONE
        assert held(engine, AccountKind.STAKE, user.address, token, second.address) == 25 * ONE
    refused(engine, lambda: user.do(MoveStake, from_node=first.address, to_node=first.address, token="HUE",
                                    amount=ONE), EconomyError, "to_node:")
    refused(engine, lambda: user.do(MoveStake, from_node=first.address, to_node=second.address, token="esHUE",
                                    amount=hue(35) + 1), OverdrawError, "amount:", "stake on")
    user.do(Unstake, node=first.address, token="esHUE", amount=hue(35))  # immediate: 40 + 35 liquid esHUE
    assert held(engine, AccountKind.LIQUID, user.address, "esHUE") == 75 * ONE
    assert held(engine, AccountKind.LOCK, user.address, "esHUE") == 0
    assert held(engine, AccountKind.LOCK, user.address, "HUE") == 0  # moving stake never locks
    assert eco.minted() == 200 * ONE


def test_vesting_releases_linearly_over_365_days(engine: Engine, eco: Economy, ms_clock: MsClock) -> None:
    user, early = Signer(eco), Signer(eco)
    grant_eshue(engine, user.address, hue(1000), T0_MS, RULES.epoch_of(T0_MS))
    grant_eshue(engine, early.address, hue(1000), T0_MS, RULES.epoch_of(T0_MS))
    refused(engine, lambda: user.do(Vest, amount=hue(1000) + 1), OverdrawError, "amount:", "holds 1000 esHUE")
    assert user.do(Vest, amount=hue(1000)).effects["vested_by"] == "2031-01-01T00:00:00+00:00"
    early.do(Vest, amount=hue(1000))
    refused(engine, lambda: user.do(Claim), EconomyError, "account:", "no vested HUE")  # nothing at t0
    ms_clock.now_ms = T0_MS + 1
    assert early.do(Claim).effects["claimed"] == "31709791983"  # 1000e18 x 1 // 31,536,000,000
    ms_clock.now_ms = T0_MS + YEAR_MS // 2  # 182.5 days
    assert user.do(Claim).effects["claimed"] == str(500 * ONE)  # exactly half
    assert early.do(Claim).effects["claimed"] == str(500 * ONE - 31_709_791_983)
    refused(engine, lambda: user.do(Claim), EconomyError, "no vested HUE")  # same instant: nothing new
    ms_clock.now_ms = T0_MS + YEAR_MS - 1
    assert user.do(Claim).effects["claimed"] == "499999999968290208016"  # 1000e18 x (year - 1) // year - 500e18
    ms_clock.now_ms = T0_MS + YEAR_MS
    assert user.do(Claim).effects["claimed"] == "31709791984"  # the rest
    assert held(engine, AccountKind.LIQUID, user.address) == 1000 * ONE
    assert held(engine, AccountKind.VEST, user.address, "esHUE") == 0
    assert eco.minted() == 2000 * ONE  # esHUE became HUE 1:1: supply did not move


def test_bribe_is_basis_points_from_the_next_epoch(engine: Engine, eco: Economy, ms_clock: MsClock) -> None:
    node = Signer(eco, add_node(engine))
    user = Signer(eco)
    epoch = RULES.epoch_of(T0_MS)
    receipt = node.do(SetBribe, node=node.address, bps=2500)
    assert receipt.effects["effective_epoch"] == epoch + 1
    assert eco.bribe(node.address, epoch) == 0  # this epoch keeps the old share
    assert eco.bribe(node.address, epoch + 1) == 2500
    refused(engine, lambda: node.do(SetBribe, node=node.address, bps=10_001), EconomyError,
            "bps: 10001 is outside 0-10000 (0-100 %)")
    refused(engine, lambda: user.do(SetBribe, node=user.address, bps=100), EconomyError,
            f"node: {user.address} is not a miner node")
    ms_clock.now_ms = T0_MS + 3_600_000  # next epoch: change it again
    node.do(SetBribe, node=node.address, bps=10_000)
    assert (eco.bribe(node.address, epoch + 1), eco.bribe(node.address, epoch + 2)) == (2500, 10_000)
    node.do(SetBribe, node=node.address, bps=0)  # the last setting of an epoch wins
    assert eco.bribe(node.address, epoch + 2) == 0


@pytest.mark.parametrize("bps", ["-1", str(2**256)])
def test_a_bribe_past_uint256_is_refused_naming_bps(engine: Engine, eco: Economy, bps: str) -> None:
    """Such a message cannot even be EIP-712 encoded: it must be refused before (not crash the encoder)."""
    node = add_node(engine)
    raw = Signed(type="SetBribe", message={"node": node.address, "bps": bps, "nonce": "0"}, signature="0x" + "11" * 65)
    refused(engine, lambda: eco.apply(raw), EconomyError, "SetBribe.bps:")


def test_fund_key_burns_the_base_fee_and_credits_the_key(engine: Engine, eco: Economy) -> None:
    credits = CreditLedger(engine)
    key_id, _ = credits.create_key("bought with HUE")
    user = Signer(eco)
    eco.genesis({user.address: hue(10)})
    before = read_book(engine)
    receipt = user.do(FundKey, key_id=key_id, amount=hue("1.2"))
    assert (receipt.effects["micro_units"], receipt.effects["spent"]) == (100_000_000, "1200000000000000000")
    after = read_book(engine)
    assert held(engine, AccountKind.LIQUID, user.address) == hue("8.8")  # 1.2 HUE left the address
    assert after.system(AccountKind.BURN) - before.system(AccountKind.BURN) == hue("1.0")  # burned
    assert after.system(AccountKind.FEES) - before.system(AccountKind.FEES) == hue("0.2")  # to the miners
    assert credits.balance(key_id) == 100.0
    assert credits.entries_total(key_id) == 100.0
    user.do(FundKey, key_id=key_id, amount=hue("1.2") + 1)  # the odd base unit buys nothing and stays
    assert held(engine, AccountKind.LIQUID, user.address) == hue("7.6")
    assert credits.balance(key_id) == 200.0
    refused(engine, lambda: user.do(FundKey, key_id=key_id, amount=12_000_000_000 - 1), EconomyError,
            "amount:", "buys nothing; one credit unit costs 0.012 HUE")
    refused(engine, lambda: user.do(FundKey, key_id=key_id, amount=hue(8)), OverdrawError, "amount:")
    refused(engine, lambda: user.do(FundKey, key_id=key_id + 1000, amount=ONE), EconomyError, "key_id:")
    credits.set_disabled(key_id, True)
    refused(engine, lambda: user.do(FundKey, key_id=key_id, amount=ONE), EconomyError, "key_id:")
    assert eco.unit_price() == {"base_fee": hue("0.01"), "miner_fee": hue("0.002")}


def test_replayed_forged_and_malformed_messages_are_refused(engine: Engine, eco: Economy) -> None:
    node = add_node(engine)
    user = Signer(eco)
    eco.genesis({user.address: hue(10)})
    signed = user.sign(Stake, node=node.address, token="HUE", amount=hue(1))
    eco.apply(signed)
    refused(engine, lambda: eco.apply(signed), EconomyError,
            f"nonce: 0 was already used by {user.address}; sign again with nonce 1")
    mainnet = EconomyDomain(chain_id=1).sign(user.wallet, Stake(account=user.address, node=node.address,
                                                                 token="HUE", amount=hue(1), nonce=1))
    refused(engine, lambda: eco.apply(mainnet), EconomyError, "signature:", "on chain 31337")
    unknown = Signed(type="Mint", message=signed.message, signature=signed.signature)
    refused(engine, lambda: eco.apply(unknown), EconomyError, "type: unknown action 'Mint'")
    extra = Signed(type="Stake", message={**signed.message, "nonce": "1", "bonus": "1"}, signature=signed.signature)
    refused(engine, lambda: eco.apply(extra), EconomyError, "Stake.bonus:")
    assert held(engine, AccountKind.STAKE, user.address) == ONE


def test_a_replay_names_the_nonce_even_when_the_funds_are_gone(engine: Engine, eco: Economy,
                                                               ms_clock: MsClock) -> None:
    node = add_node(engine)
    user = Signer(eco)
    eco.genesis({user.address: hue(10)})
    user.do(Stake, node=node.address, token="HUE", amount=hue(10))
    user.do(Unstake, node=node.address, token="HUE", amount=hue(10))
    ms_clock.now_ms += LOCK_MS
    withdraw = user.sign(Withdraw, amount=hue(10))
    eco.apply(withdraw)
    refused(engine, lambda: eco.apply(withdraw), EconomyError, "nonce: 2 was already used")


@pytest.mark.parametrize("table", ["economy_legs", "economy_txs"])
def test_the_book_refuses_update_and_delete(engine: Engine, eco: Economy, table: str) -> None:
    eco.genesis({Wallet.create().address: hue(1)})
    before = read_book(engine).snapshot()
    for sql in (f"UPDATE {table} SET at_ms = at_ms + 1", f"DELETE FROM {table}"):
        with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
            conn.execute(text(sql))
    assert read_book(engine).snapshot() == before


# ------------------------------------------------------------------------------------------------ races


@pytest.fixture
def pg_economy(postgres_url: str) -> Iterator[Economy]:
    upgrade(postgres_url)
    engine = make_engine(postgres_url, pool_size=4)
    yield Economy(engine, RULES, EconomyDomain(), clock=MsClock(T0_MS))
    engine.dispose()


def test_two_spends_of_one_balance_one_wins(pg_economy: Economy) -> None:
    eco, engine = pg_economy, pg_economy.engine
    nodes = [add_node(engine).address for _ in range(2)]
    for round_ in range(20):
        user = Signer(eco)
        eco.genesis({user.address: hue(100)})
        targets = (nodes[0], nodes[round_ % 2])  # the same node, or two
        spends = [user.sign(Stake, node=n, token="HUE", amount=hue(100)) for n in targets]
        results = race(*(partial(eco.apply, s) for s in spends))
        assert sum(isinstance(r, Receipt) for r in results) == 1, results
        loser = next(r for r in results if not isinstance(r, Receipt))
        assert isinstance(loser, OverdrawError), repr(loser)
        assert held(engine, AccountKind.LIQUID, user.address) == 0
        assert held(engine, AccountKind.STAKE, user.address) == 100 * ONE
    check_book(read_book(engine), CAP)


def test_two_copies_of_one_message_post_once(pg_economy: Economy) -> None:
    eco, engine = pg_economy, pg_economy.engine
    node = add_node(engine).address
    for _ in range(20):
        user = Signer(eco)
        eco.genesis({user.address: hue(100)})
        signed = user.sign(Stake, node=node, token="HUE", amount=hue(30))
        results = race(partial(eco.apply, signed), partial(eco.apply, signed))
        assert sum(isinstance(r, Receipt) for r in results) == 1, results
        loser = next(r for r in results if not isinstance(r, Receipt))
        assert isinstance(loser, EconomyError) and "nonce: 0 was already used" in str(loser), repr(loser)
        assert held(engine, AccountKind.STAKE, user.address) == 30 * ONE
    check_book(read_book(engine), CAP)


def test_two_geneses_of_one_address_at_once_mint_once(pg_economy: Economy) -> None:
    eco = pg_economy
    for _ in range(10):
        address = Wallet.create().address
        results = race(partial(eco.genesis, {address: hue(5)}), partial(eco.genesis, {address: hue(5)}))
        assert sorted(map(repr, results)) == sorted([repr([address]), repr([])]), results


def test_two_claims_at_once_release_the_vested_amount_once(engine: Engine, eco: Economy, ms_clock: MsClock) -> None:
    for _ in range(10):
        user = Signer(eco)
        grant_eshue(engine, user.address, hue(1000), ms_clock.now_ms, RULES.epoch_of(ms_clock.now_ms))
        start = ms_clock.now_ms
        user.do(Vest, amount=hue(1000))
        ms_clock.now_ms = start + YEAR_MS // 2
        claims = [user.sign(Claim), user.sign(Claim)]
        race(*(partial(eco.apply, c) for c in claims))
        assert held(engine, AccountKind.LIQUID, user.address) == 500 * ONE
