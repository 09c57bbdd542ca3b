"""Attacks on the token economy's signed actions, made as raw JSON bodies (what an attacker would POST to
``/v1/economy/actions``) and fed to ``Economy.apply`` on SQLite and PostgreSQL.

The attacker is a miner node with its own key and a captured copy of an honest user's signed messages. It tries
to spend the victim's stake and locked HUE, to set another node's bribe, to fund its own API key from the victim's
HUE, to replay the victim's messages (as captured, with the address's case changed, with the signature's
malleable twin, across chains and across action types) and to slip in amounts and nonces no uint can hold. Every
attack is refused with an ``EconomyError`` naming the field, none moves a base unit or spends a nonce, and the
victim's own next actions still work. The same attacks over HTTP are in ``test_economy_http.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine

from heurist.credits.ledger import CreditLedger
from heurist.economy.actions import Action, EconomyDomain, FundKey, SetBribe, Signed, Stake, Unstake, Withdraw
from heurist.economy.amounts import ONE
from heurist.economy.book import EconomyError
from heurist.economy.config import CAP, Rules
from heurist.economy.service import Economy
from heurist.identity import Wallet, recover_encoded
from tests.fixtures.economy import DAY_MS, T0_MS, MsClock, add_node, check_book, read_book, row_counts

RULES = Rules(epoch_s=3600)
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


class World:
    def __init__(self, engine: Engine) -> None:
        self.engine, self.clock = engine, MsClock(T0_MS)
        self.eco = Economy(engine, RULES, EconomyDomain(), clock=self.clock)
        self.victim, self.miner, self.other = Wallet.create(), add_node(engine), add_node(engine)
        self.eco.genesis({self.victim.address: 50_000 * ONE, self.miner.address: 1_000 * ONE})
        self.credits = CreditLedger(engine)
        self.attacker_key, _ = self.credits.create_key("attacker's key")

    def body(self, wallet: Wallet, action: Action, domain: EconomyDomain | None = None) -> dict[str, Any]:
        """What a client POSTs: the signed action as JSON (amounts and nonces as decimal strings)."""
        return (domain or self.eco.domain).sign(wallet, action).model_dump()

    def post(self, body: dict[str, Any]) -> Any:
        return self.eco.apply(Signed.model_validate(body))

    def holdings(self, address: str) -> dict[tuple[str, str, str, str], int]:
        return {(a.kind.value, a.token.value, a.node, a.ref): a.balance
                for a in read_book(self.engine).accounts.values() if a.owner == address}


@pytest.fixture
def world(engine: Engine) -> Iterator[World]:
    world = World(engine)
    yield world
    check_book(read_book(engine), CAP)


def malleable_twin(signature: str) -> str:
    """The other valid ECDSA signature of the same digest: (r, n - s) with the recovery bit flipped."""
    raw = bytes.fromhex(signature[2:])
    r, s, v = raw[:32], int.from_bytes(raw[32:64], "big"), raw[64]
    return "0x" + (r + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - v if v in (27, 28) else v ^ 1])).hex()


def test_a_miner_cannot_spend_or_steer_what_is_not_its_own(world: World) -> None:
    victim, miner, other = world.victim, world.miner, world.other
    captured = world.body(victim, Stake(account=victim.address, node=miner.address, token="HUE",
                                        amount=30_000 * ONE, nonce=0))
    world.post(captured)
    world.post(world.body(victim, Unstake(account=victim.address, node=miner.address, token="HUE",
                                          amount=5_000 * ONE, nonce=1)))
    world.clock.now_ms += 30 * DAY_MS  # the victim's 5,000 HUE are withdrawable now: a target
    before, counts = world.holdings(victim.address), row_counts(world.engine)
    nonce = 2**64 - 1
    attacks: list[tuple[dict[str, Any], str]] = [
        # the miner signs for the victim's account
        (world.body(miner, Unstake(account=victim.address, node=miner.address, token="HUE", amount=ONE, nonce=7)),
         "signature:"),
        (world.body(miner, Withdraw(account=victim.address, amount=5_000 * ONE, nonce=7)), "signature:"),
        (world.body(miner, FundKey(account=victim.address, key_id=world.attacker_key, amount=ONE, nonce=7)),
         "signature:"),
        (world.body(miner, SetBribe(node=other.address, bps=0, nonce=7)), "signature:"),  # another node's bribe
        # the victim's captured message: replayed as is, with the address lowercased, with the malleable twin
        (captured, "nonce: 0 was already used"),
        ({**captured, "message": {**captured["message"], "account": victim.address.lower()}},
         "nonce: 0 was already used"),
        ({**captured, "signature": malleable_twin(captured["signature"])}, "nonce: 0 was already used"),
        # ... or passed off as another action, or with its amount or node changed
        ({**captured, "type": "Unstake"}, "signature:"),
        ({**captured, "message": {**captured["message"], "node": other.address}}, "signature:"),
        # a message the victim signed for another chain (the largest nonce, never used here)
        (world.body(victim, Withdraw(account=victim.address, amount=5_000 * ONE, nonce=nonce),
                    EconomyDomain(chain_id=1)), "signature:"),
        (world.body(victim, Withdraw(account=victim.address, amount=5_000 * ONE, nonce=nonce),
                    EconomyDomain(verifying_contract="0x" + "11" * 20)), "signature:"),
        # numbers no uint holds, or no number at all
        ({**captured, "message": {**captured["message"], "amount": "-5", "nonce": "9"}}, "Stake.amount:"),
        ({**captured, "message": {**captured["message"], "amount": str(2**256), "nonce": "9"}}, "Stake.amount:"),
        ({**captured, "message": {**captured["message"], "amount": "1e18", "nonce": "9"}}, "Stake.amount:"),
        ({**captured, "message": {**captured["message"], "nonce": str(2**64)}}, "Stake.nonce:"),
        ({**captured, "message": {**captured["message"], "nonce": "-1"}}, "Stake.nonce:"),
        ({"type": "SetBribe", "message": {"node": miner.address, "bps": "-1", "nonce": "3"},
          "signature": captured["signature"]}, "SetBribe.bps:"),
        # fields that are not in the type
        ({**captured, "message": {**captured["message"], "beneficiary": miner.address}}, "Stake.beneficiary:"),
        ({**captured, "message": {k: v for k, v in captured["message"].items() if k != "node"}}, "Stake.node:"),
        ({**captured, "type": "Transfer"}, "type: unknown action 'Transfer'"),
    ]
    for body, needle in attacks:
        with pytest.raises(EconomyError) as info:
            world.post(body)
        assert needle in str(info.value), (needle, str(info.value))
    assert world.holdings(victim.address) == before
    assert row_counts(world.engine) == counts  # nothing posted, no nonce spent
    assert world.credits.balance(world.attacker_key) == 0.0
    assert world.eco.bribe(other.address, RULES.epoch_of(world.clock.now_ms) + 1) == 0

    # the victim's own next actions still work, the largest nonce included (once)
    assert world.eco.next_nonce(victim.address) == 2
    withdraw = world.body(victim, Withdraw(account=victim.address, amount=5_000 * ONE, nonce=nonce))
    world.post(withdraw)
    counts = row_counts(world.engine)
    with pytest.raises(EconomyError, match=f"nonce: {nonce} was already used"):
        world.post(withdraw)
    assert row_counts(world.engine) == counts
    world.post(world.body(victim, Unstake(account=victim.address, node=miner.address, token="HUE",
                                          amount=ONE, nonce=2)))
    world.post(world.body(miner, SetBribe(node=miner.address, bps=1_000, nonce=0)))  # its own bribe: fine
    after = world.holdings(victim.address)
    assert after[("liquid", "HUE", "", "")] == 25_000 * ONE
    assert after[("stake", "HUE", miner.address, "")] == 25_000 * ONE - ONE


def test_a_recovered_key_other_than_the_account_never_passes(world: World) -> None:
    """A signature recovering to *some* address is not enough: it must be the account's (here the attacker
    searches for nothing; it just signs the victim's exact typed data with its own key)."""
    victim, miner = world.victim, world.miner
    action = Stake(account=victim.address, node=miner.address, token="HUE", amount=ONE, nonce=5)
    forged = world.body(miner, action)
    assert recover_encoded(world.eco.domain.encoded(action), forged["signature"]) == miner.address  # valid, wrong key
    with pytest.raises(EconomyError, match=f"signature: does not recover to account {victim.address}"):
        world.post(forged)
    assert world.holdings(victim.address) == {("liquid", "HUE", "", ""): 50_000 * ONE}
