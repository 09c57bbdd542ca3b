"""The three settlement contracts on an in-process EVM (web3's EthereumTesterProvider: eth-tester on py-evm).

Deployed from the shipped artifacts (heurist/settlement/build), which the first tests recompile from the sources. Then:
HUE's cap on what was ever minted (exactly the cap mints, one base unit more reverts, burning frees nothing),
burn/burnFrom and who may mint; esHUE's transfer rule, its full HUE backing, and linear vesting checked to the base
unit at a quarter, half and past the year (eth-tester's clock moved with ``time_travel``); the distributor's post
(settlement key only, once an epoch) and claims with proofs from heurist.economy.merkle (esHUE for epoch >= 0, HUE
for the TGE's epoch -1), refusing forged proofs, wrong amounts, double claims and anything past the posted total.
A Hypothesis property claims random payout lists in random order: each leaf pays once, and the sum paid is the
total. Each test deploys its own contracts (3 deploys, about 0.1 s) on the module's one chain.
"""

from __future__ import annotations

import itertools
import json
import re
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from eth_tester.exceptions import TransactionFailed
from eth_utils import to_checksum_address
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from web3 import EthereumTesterProvider, Web3
from web3.contract import Contract
from web3.exceptions import ContractLogicError
from web3.logs import DISCARD

from heurist.economy.merkle import MerkleTree
from heurist.errors import ConfigError
from heurist.settlement import artifacts
from heurist.settlement.artifacts import CONTRACTS, compile_source, load, source_path, stale

HUE = 10**18
CAP = 10**27
YEAR = 365 * 86400
ZERO = "0x" + "00" * 20


@pytest.fixture(scope="module")
def w3() -> Web3:
    return Web3(EthereumTesterProvider())


def deploy(w3: Web3, name: str, *args: Any, sender: str | None = None) -> Contract:
    art = load(name)
    tx = w3.eth.contract(abi=art.abi, bytecode=art.bytecode).constructor(*args).transact(
        {"from": sender or w3.eth.accounts[0]})
    return w3.eth.contract(address=w3.eth.wait_for_transaction_receipt(tx).contractAddress, abi=art.abi)


def send(w3: Web3, call: Any, sender: str) -> Any:
    receipt = w3.eth.wait_for_transaction_receipt(call.transact({"from": sender}))
    assert receipt.status == 1
    return receipt


@contextmanager
def reverts(reason: str) -> Iterator[None]:
    """The transaction reverts with ``reason`` (eth-tester reports it when web3 estimates the gas)."""
    with pytest.raises((TransactionFailed, ContractLogicError)) as raised:
        yield
    assert reason in str(raised.value)


@dataclass
class System:
    w3: Web3
    hue: Contract
    eshue: Contract
    distributor: Contract
    owner: str
    settler: str

    def balances(self, account: str) -> tuple[int, int]:
        return self.hue.functions.balanceOf(account).call(), self.eshue.functions.balanceOf(account).call()


@pytest.fixture
def system(w3: Web3) -> System:
    """Fresh contracts wired as a deployment wires them: esHUE and the distributor mint, the distributor moves esHUE."""
    owner, settler = w3.eth.accounts[0], w3.eth.accounts[1]
    hue = deploy(w3, "HUE")
    eshue = deploy(w3, "esHUE", hue.address)
    distributor = deploy(w3, "RewardsDistributor", hue.address, eshue.address, settler)
    for call in (hue.functions.setMinter(eshue.address, True), hue.functions.setMinter(distributor.address, True),
                 eshue.functions.setMinter(distributor.address, True),
                 eshue.functions.setProtocol(distributor.address, True)):
        send(w3, call, owner)
    return System(w3, hue, eshue, distributor, owner, settler)


# -- artifacts ----------------------------------------------------------------------------------------------------


def test_shipped_artifacts_are_what_the_sources_compile_to(tmp_path: Path) -> None:
    assert stale() == []
    artifacts.write(build_dir=tmp_path)  # what `python -m heurist.settlement.artifacts` writes, byte for byte
    for name in CONTRACTS:
        assert (tmp_path / f"{name}.json").read_text() == artifacts.artifact_path(name).read_text(), name
        assert compile_source(source_path(name))["bytecode"] == load(name).bytecode


def test_the_artifacts_ship_as_package_data_and_sources_are_asked_for_where_absent(tmp_path: Path) -> None:
    """A non-editable install (the services image) deploys from package data; without the sources, the check
    says where to run it instead of failing on a missing file."""
    config = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    globs = config["tool"]["setuptools"]["package-data"]["heurist"]
    package = Path(artifacts.__file__).parents[1]
    shipped = {p.resolve() for pattern in globs for p in package.glob(pattern)}
    assert {artifacts.artifact_path(name).resolve() for name in CONTRACTS} <= shipped
    with pytest.raises(ConfigError, match="in a checkout of the repository"):
        stale(tmp_path / "no-sources")


def test_stale_names_every_artifact_that_differs(tmp_path: Path) -> None:
    sources, build = tmp_path / "src", tmp_path / "build"
    sources.mkdir()
    for name in CONTRACTS:
        (sources / f"{name}.vy").write_text(source_path(name).read_text())
    artifacts.write(sources, build)
    assert stale(sources, build) == []
    (sources / "HUE.vy").write_text(source_path("HUE").read_text() + "\n# an edit\n")
    shipped = json.loads((build / "esHUE.json").read_text())
    (build / "esHUE.json").write_text(json.dumps(shipped | {"bytecode": shipped["bytecode"][:-2] + "00"}))
    (build / "RewardsDistributor.json").unlink()
    assert stale(sources, build) == ["HUE", "esHUE", "RewardsDistributor"]
    with pytest.raises(ConfigError, match=re.escape(artifacts.REGENERATE)):
        load("RewardsDistributor", build)
    with pytest.raises(ConfigError, match="give one of HUE, esHUE, RewardsDistributor"):
        load("WETH")


# -- HUE ----------------------------------------------------------------------------------------------------------


def test_hue_mints_up_to_exactly_the_cap_and_burning_frees_nothing(system: System) -> None:
    w3, hue, owner = system.w3, system.hue, system.owner
    a, b = w3.eth.accounts[2], w3.eth.accounts[3]
    send(w3, hue.functions.setMinter(owner, True), owner)
    assert (hue.functions.cap().call(), hue.functions.decimals().call()) == (CAP, 18)
    with reverts("HUE: cap"):
        hue.functions.mint(a, 2**256 - 1).transact({"from": owner})
    send(w3, hue.functions.mint(a, CAP - 1), owner)
    send(w3, hue.functions.mint(b, 1), owner)
    assert hue.functions.minted().call() == hue.functions.totalSupply().call() == CAP
    with reverts("HUE: cap"):
        hue.functions.mint(b, 1).transact({"from": owner})
    send(w3, hue.functions.burn(10 * HUE), a)
    assert (hue.functions.totalSupply().call(), hue.functions.minted().call()) == (CAP - 10 * HUE, CAP)
    with reverts("HUE: cap"):
        hue.functions.mint(b, 1).transact({"from": owner})
    send(w3, system.eshue.functions.setMinter(owner, True), owner)
    with reverts("HUE: cap"):  # the cap bounds esHUE too: its HUE backing is minted first
        system.eshue.functions.mint(b, 1).transact({"from": owner})


def test_hue_transfers_burn_and_burn_from(system: System) -> None:
    w3, hue, owner = system.w3, system.hue, system.owner
    a, b, spender = w3.eth.accounts[2], w3.eth.accounts[3], w3.eth.accounts[4]
    assert (hue.functions.name().call(), hue.functions.symbol().call()) == ("Heurist", "HUE")
    send(w3, hue.functions.setMinter(owner, True), owner)
    send(w3, hue.functions.mint(a, 100 * HUE), owner)
    send(w3, hue.functions.transfer(b, 30 * HUE), a)
    with reverts("HUE: balance too low"):
        hue.functions.transfer(b, 70 * HUE + 1).transact({"from": a})
    with reverts("HUE: balance too low"):
        hue.functions.burn(30 * HUE + 1).transact({"from": b})
    receipt = send(w3, hue.functions.burn(10 * HUE), b)
    event = hue.events.Transfer().process_receipt(receipt, errors=DISCARD)[0].args
    assert (event.sender, event.receiver, event.value) == (b, ZERO, 10 * HUE)
    with reverts("HUE: allowance too low"):
        hue.functions.burnFrom(a, 1).transact({"from": spender})
    send(w3, hue.functions.approve(spender, 25 * HUE), a)
    send(w3, hue.functions.burnFrom(a, 20 * HUE), spender)
    send(w3, hue.functions.transferFrom(a, b, 5 * HUE), spender)
    with reverts("HUE: allowance too low"):
        hue.functions.burnFrom(a, 1).transact({"from": spender})
    assert hue.functions.allowance(a, spender).call() == 0
    assert system.balances(a)[0] == 45 * HUE and system.balances(b)[0] == 25 * HUE
    assert (hue.functions.totalSupply().call(), hue.functions.minted().call()) == (70 * HUE, 100 * HUE)


def test_only_minters_mint_and_only_owners_set_them(system: System) -> None:
    w3, hue, eshue, owner = system.w3, system.hue, system.eshue, system.owner
    stranger = w3.eth.accounts[5]
    with reverts("HUE: not a minter"):
        hue.functions.mint(stranger, 1).transact({"from": stranger})
    with reverts("HUE: not the owner"):
        hue.functions.setMinter(stranger, True).transact({"from": stranger})
    with reverts("esHUE: not a minter"):
        eshue.functions.mint(stranger, 1).transact({"from": stranger})
    for call in (eshue.functions.setMinter(stranger, True), eshue.functions.setProtocol(stranger, True)):
        with reverts("esHUE: not the owner"):
            call.transact({"from": stranger})
    with reverts("RewardsDistributor: not the owner"):
        system.distributor.functions.setSettler(stranger).transact({"from": stranger})
    send(w3, hue.functions.setMinter(stranger, True), owner)
    send(w3, hue.functions.mint(stranger, 7), stranger)
    assert hue.functions.minters(stranger).call() and system.balances(stranger)[0] == 7
    send(w3, hue.functions.setMinter(stranger, False), owner)
    with reverts("HUE: not a minter"):
        hue.functions.mint(stranger, 1).transact({"from": stranger})
    send(w3, hue.functions.setMinter(eshue.address, False), owner)  # esHUE may not mint unbacked
    send(w3, eshue.functions.setMinter(owner, True), owner)
    with reverts("HUE: not a minter"):
        eshue.functions.mint(stranger, 1).transact({"from": owner})


# -- esHUE --------------------------------------------------------------------------------------------------------


def test_eshue_moves_only_by_the_protocols_contracts(system: System) -> None:
    w3, eshue, owner = system.w3, system.eshue, system.owner
    holder, friend, protocol = w3.eth.accounts[2], w3.eth.accounts[3], w3.eth.accounts[6]
    send(w3, eshue.functions.setMinter(owner, True), owner)
    send(w3, eshue.functions.mint(holder, 10 * HUE), owner)
    refused = "esHUE: transfers only by the protocol's contracts"
    with reverts(refused):
        eshue.functions.transfer(friend, HUE).transact({"from": holder})
    send(w3, eshue.functions.approve(friend, 5 * HUE), holder)
    with reverts(refused):
        eshue.functions.transferFrom(holder, friend, HUE).transact({"from": friend})
    send(w3, eshue.functions.setProtocol(protocol, True), owner)
    send(w3, eshue.functions.approve(protocol, 4 * HUE), holder)
    send(w3, eshue.functions.transferFrom(holder, protocol, 3 * HUE), protocol)  # e.g. a staking contract pulls
    send(w3, eshue.functions.transfer(friend, 2 * HUE), protocol)  # and pays out
    with reverts("esHUE: allowance too low"):
        eshue.functions.transferFrom(holder, protocol, 2 * HUE).transact({"from": protocol})
    assert [system.balances(x)[1] for x in (holder, friend, protocol)] == [7 * HUE, 2 * HUE, HUE]
    send(w3, eshue.functions.setProtocol(protocol, False), owner)
    with reverts(refused):
        eshue.functions.transfer(friend, HUE).transact({"from": protocol})


def unreleased(eshue: Contract, accounts: list[str]) -> int:
    total = 0
    for account in accounts:
        for i in range(eshue.functions.vestCount(account).call()):
            amount, released, _start = eshue.functions.vests(account, i).call()
            total += amount - released
    return total


def test_eshue_is_backed_and_vests_linearly_over_a_year(system: System) -> None:
    w3, hue, eshue, owner = system.w3, system.hue, system.eshue, system.owner
    tester = w3.provider.ethereum_tester  # type: ignore[attr-defined]
    holders = [w3.eth.accounts[2], w3.eth.accounts[3]]
    alice = holders[0]

    def backed() -> None:  # HUE held by esHUE == esHUE supply + what open vests have not released
        assert hue.functions.balanceOf(eshue.address).call() == (
            eshue.functions.totalSupply().call() + unreleased(eshue, holders))

    assert eshue.functions.vestingSeconds().call() == YEAR
    send(w3, eshue.functions.setMinter(owner, True), owner)
    amount = 1000 * HUE + 7  # odd, so the halves floor
    send(w3, eshue.functions.mint(alice, amount + 5 * HUE), owner)
    send(w3, eshue.functions.mint(holders[1], 3 * HUE), owner)
    backed()
    with reverts("esHUE: balance too low"):
        eshue.functions.vest(amount + 5 * HUE + 1).transact({"from": alice})
    receipt = send(w3, eshue.functions.vest(amount), alice)
    start = w3.eth.get_block(receipt.blockNumber).timestamp
    assert eshue.functions.vests(alice, 0).call() == [amount, 0, start]
    assert (eshue.functions.vestCount(alice).call(), system.balances(alice)) == (1, (0, 5 * HUE))
    backed()
    with reverts("esHUE: no such vest"):
        eshue.functions.release(1).transact({"from": alice})

    tester.time_travel(start + YEAR // 4)
    tester.mine_blocks()
    assert eshue.functions.releasable(alice, 0).call() == amount * (YEAR // 4) // YEAR
    tester.time_travel(start + YEAR // 2)  # the release is mined at exactly half a year
    send(w3, eshue.functions.release(0), alice)
    half = amount // 2
    assert system.balances(alice)[0] == half and eshue.functions.vests(alice, 0).call() == [amount, half, start]
    assert eshue.functions.releasable(alice, 0).call() == 0
    backed()
    send(w3, eshue.functions.vest(2 * HUE), alice)  # a second vest, id 1, on its own clock
    tester.time_travel(start + YEAR + 1000)
    tester.mine_blocks()
    assert eshue.functions.releasable(alice, 0).call() == amount - half  # capped at the year
    receipt = send(w3, eshue.functions.release(0), alice)
    event = eshue.events.Release().process_receipt(receipt, errors=DISCARD)[0].args
    assert (event.account, event.id, event.amount) == (alice, 0, amount - half)
    assert system.balances(alice)[0] == amount and eshue.functions.releasable(alice, 0).call() == 0
    assert 0 < eshue.functions.releasable(alice, 1).call() < 2 * HUE
    backed()


# -- RewardsDistributor -------------------------------------------------------------------------------------------


def root_of(tree: MerkleTree) -> bytes:
    return bytes.fromhex(tree.root[2:])


def claim(system: System, epoch: int, account: str, amount: int, proof: list[str], sender: str | None = None) -> Any:
    call = system.distributor.functions.claim(epoch, account, amount, proof)
    return send(system.w3, call, sender or system.w3.eth.accounts[9])


def test_roots_are_posted_by_the_settlement_key_once_an_epoch(system: System) -> None:
    w3, distributor, settler = system.w3, system.distributor, system.settler
    root, other = b"\x11" * 32, b"\x22" * 32
    with reverts("RewardsDistributor: not the settlement key"):
        distributor.functions.post(0, root, 100, 90, 10).transact({"from": system.owner})
    with reverts("RewardsDistributor: empty root"):
        distributor.functions.post(0, b"\x00" * 32, 100, 90, 10).transact({"from": settler})
    receipt = send(w3, distributor.functions.post(0, root, 100, 90 * HUE, 10 * HUE), settler)
    event = distributor.events.RootPosted().process_receipt(receipt)[0].args
    assert (event.epoch, event.root, event.total, event.issued, event.burned) == (0, root, 100, 90 * HUE, 10 * HUE)
    f = distributor.functions
    assert (f.roots(0).call(), f.totals(0).call(), f.issued(0).call(), f.burned(0).call()) == (
        root, 100, 90 * HUE, 10 * HUE)
    assert (f.roots(1).call(), f.claimedTotal(0).call()) == (b"\x00" * 32, 0)
    with reverts("RewardsDistributor: root already posted"):
        distributor.functions.post(0, other, 100, 90, 10).transact({"from": settler})
    new_key = w3.eth.accounts[7]
    send(w3, distributor.functions.setSettler(new_key), system.owner)
    assert distributor.functions.settler().call() == new_key
    with reverts("RewardsDistributor: not the settlement key"):
        distributor.functions.post(1, other, 1, 0, 0).transact({"from": settler})
    send(w3, distributor.functions.post(-1, other, 1, 0, 0), new_key)
    assert (f.hue().call(), f.eshue().call(), f.owner().call()) == (
        system.hue.address, system.eshue.address, system.owner)


def test_claims_pay_eshue_for_an_epoch_and_hue_for_the_tge_once_each(system: System) -> None:
    w3, distributor, settler = system.w3, system.distributor, system.settler
    miners = w3.eth.accounts[2:7]
    epoch0 = [(a, (i + 1) * 1000 * HUE + i) for i, a in enumerate(miners)]
    tge = [(miners[0], 50 * HUE), (miners[3], 7), (w3.eth.accounts[8], 123 * HUE)]
    trees = {0: MerkleTree.of(epoch0), -1: MerkleTree.of(tge)}
    with reverts("RewardsDistributor: no root for this epoch"):
        claim(system, 0, *epoch0[0], trees[0].proof(*epoch0[0]))
    for epoch, leaves in ((0, epoch0), (-1, tge)):
        send(w3, distributor.functions.post(epoch, root_of(trees[epoch]), sum(v for _, v in leaves), 0, 0), settler)

    miner, amount = epoch0[1]
    proof = trees[0].proof(miner, amount)
    assert not distributor.functions.isClaimed(0, miner, amount).call()
    with reverts("RewardsDistributor: bad proof"):  # the right proof, a wrong amount
        claim(system, 0, miner, amount + 1, proof)
    with reverts("RewardsDistributor: bad proof"):  # another leaf's proof
        claim(system, 0, miner, amount, trees[0].proof(*epoch0[2]))
    with reverts("RewardsDistributor: bad proof"):  # one byte of one node changed
        claim(system, 0, miner, amount, [proof[0][:-2] + ("00" if proof[0][-2:] != "00" else "01"), *proof[1:]])
    with reverts("RewardsDistributor: bad proof"):  # a real leaf of the TGE tree, claimed against epoch 0
        claim(system, 0, *tge[0], trees[-1].proof(*tge[0]))
    receipt = claim(system, 0, miner, amount, proof)  # sent by someone else: pays the miner
    event = distributor.events.Claimed().process_receipt(receipt, errors=DISCARD)[0].args
    assert (event.epoch, event.account, event.amount) == (0, miner, amount)
    assert system.balances(miner) == (0, amount) and distributor.functions.isClaimed(0, miner, amount).call()
    with reverts("RewardsDistributor: already claimed"):
        claim(system, 0, miner, amount, proof)
    send(w3, distributor.functions.post(1, root_of(trees[0]), amount, 0, 0), settler)  # the same leaf, next epoch
    claim(system, 1, miner, amount, proof)  # a leaf is claimed once per epoch, not once ever
    assert system.balances(miner) == (0, 2 * amount)

    for account, value in epoch0:
        if account != miner:
            claim(system, 0, account, value, trees[0].proof(account, value), sender=account)
    for account, value in tge:
        claim(system, -1, account, value, trees[-1].proof(account, value))
    paid_hue = dict(tge)
    for account, value in epoch0:
        assert system.balances(account) == (paid_hue.get(account, 0), value * (2 if account == miner else 1))
    assert system.balances(w3.eth.accounts[8]) == (123 * HUE, 0)
    for epoch, leaves in ((0, epoch0), (-1, tge)):
        assert distributor.functions.claimedTotal(epoch).call() == distributor.functions.totals(epoch).call()
        assert all(distributor.functions.isClaimed(epoch, a, v).call() for a, v in leaves)
    eshue_paid = sum(v for _, v in epoch0) + amount
    assert system.eshue.functions.totalSupply().call() == eshue_paid
    assert system.hue.functions.balanceOf(system.eshue.address).call() == eshue_paid
    assert system.hue.functions.totalSupply().call() == eshue_paid + sum(v for _, v in tge)


def test_claims_never_pay_more_than_the_posted_total(system: System) -> None:
    w3, distributor = system.w3, system.distributor
    leaves = [(w3.eth.accounts[2], 100), (w3.eth.accounts[3], 200), (w3.eth.accounts[4], 300)]
    tree = MerkleTree.of(leaves)
    send(w3, distributor.functions.post(3, root_of(tree), 500, 0, 0), system.settler)  # leaves sum to 600
    claim(system, 3, *leaves[0], tree.proof(*leaves[0]))
    claim(system, 3, *leaves[1], tree.proof(*leaves[1]))
    with reverts("RewardsDistributor: over the epoch's total"):
        claim(system, 3, *leaves[2], tree.proof(*leaves[2]))
    assert distributor.functions.claimedTotal(3).call() == 300
    assert not distributor.functions.isClaimed(3, *leaves[2]).call()
    assert system.eshue.functions.totalSupply().call() == 300


# Random payout lists (unique addresses, as the economy pays one leaf an address an epoch), claimed in random order.
addresses = st.binary(min_size=20, max_size=20).map(to_checksum_address)
payouts = st.dictionaries(addresses, st.integers(min_value=1, max_value=10**24), min_size=1, max_size=10)
epochs = itertools.count(100)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payouts=payouts, order=st.randoms(use_true_random=False))
def test_every_leaf_pays_once_and_the_epoch_pays_its_total(system: System, payouts: dict[str, int], order: Any) -> None:
    """One deployment for all examples, a new epoch each: epochs share nothing but the cap."""
    w3, distributor, epoch = system.w3, system.distributor, next(epochs)
    leaves = list(payouts.items())
    tree, total = MerkleTree.of(leaves), sum(payouts.values())
    send(w3, distributor.functions.post(epoch, root_of(tree), total, total, 0), system.settler)
    before = {a: system.balances(a)[1] for a in payouts}
    order.shuffle(leaves)
    for account, amount in leaves:
        claim(system, epoch, account, amount, tree.proof(account, amount))
        with reverts("RewardsDistributor: already claimed"):
            claim(system, epoch, account, amount, tree.proof(account, amount))
    assert distributor.functions.claimedTotal(epoch).call() == total
    assert {a: system.balances(a)[1] - before[a] for a in payouts} == payouts
