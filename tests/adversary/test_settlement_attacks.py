"""A miner attacks the settlement contracts holding only its own key and the chain's HTTP RPC (ganache,
tests/fixtures/evm_node.py): it signs raw transactions itself, with a fixed gas limit, so nothing of ours
(``heurist.settlement.claim``'s checks before sending, the node's gas estimate) stands between it and the contract.

Every attack is both read (``eth_call``: the revert reason the contract gives) and SENT: the mined transaction must
fail (receipt status 0) and leave the tokens and the distributor as they were. The attacks: posting or replacing a
root, making itself the settler or a minter; claiming more than its leaf with its real proof, another miner's leaf
to itself, an epoch with no root, its own leaf twice; minting HUE or esHUE directly; selling esHUE by transfer or
transferFrom. Afterwards the honest miner's claim pays exactly its leaf, and the distributor has paid no more than
the epoch's posted total.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from eth_account import Account
from web3 import Web3
from web3.types import TxReceipt

from heurist.economy.amounts import ONE
from heurist.economy.merkle import MerkleTree
from heurist.identity import Wallet
from heurist.settlement.artifacts import load
from heurist.settlement.chain import connect, transact
from heurist.settlement.claim import Leaf, claim
from heurist.settlement.deploy import deploy
from tests.fixtures.evm_node import EvmNode

EPOCH = 7
ATTACK_GAS = 400_000  # fixed: the attacker does not ask the node whether its transaction would pass


@dataclass
class Chain:
    w3: Web3
    hue: Any
    eshue: Any
    dist: Any
    tree: MerkleTree
    leaves: dict[str, int]
    settler: Wallet
    honest: Wallet
    victim: Wallet
    attacker: Wallet
    buyer: Wallet

    def proof(self, who: Wallet) -> list[bytes]:
        return [bytes.fromhex(p[2:]) for p in self.tree.proof(who.address, self.leaves[who.address])]

    def state(self) -> tuple[Any, ...]:
        """What a failed attack must leave exactly as it was."""
        people = (self.honest, self.victim, self.attacker, self.buyer)
        return (tuple(self.hue.functions.balanceOf(p.address).call() for p in people),
                tuple(self.eshue.functions.balanceOf(p.address).call() for p in people),
                self.hue.functions.totalSupply().call(), self.hue.functions.minted().call(),
                self.eshue.functions.totalSupply().call(), self.dist.functions.claimedTotal(EPOCH).call(),
                bytes(self.dist.functions.roots(EPOCH).call()), bytes(self.dist.functions.roots(EPOCH + 1).call()),
                self.dist.functions.settler().call(), self.hue.functions.minters(self.attacker.address).call(),
                self.eshue.functions.minters(self.attacker.address).call(),
                self.eshue.functions.protocol(self.attacker.address).call())


@pytest.fixture(scope="module")
def chain(evm_node: EvmNode) -> Chain:
    """Deployed by the operator's key, with epoch 7's root posted: three miners' leaves, the attacker's among them."""
    w3 = connect(evm_node.url, 1337)
    settler, honest, victim, attacker, buyer = (evm_node.wallet(i) for i in range(5))
    done = deploy(w3, settler)
    leaves = {honest.address: 1_000 * ONE + 1, victim.address: 2_500 * ONE, attacker.address: 300 * ONE + 7}
    tree = MerkleTree.of(list(leaves.items()))
    dist = w3.eth.contract(address=done.distributor, abi=load("RewardsDistributor").abi)
    transact(w3, settler, dist.functions.post(EPOCH, bytes.fromhex(tree.root[2:]), sum(leaves.values()),
                                              sum(leaves.values()), 12 * ONE))
    return Chain(w3, w3.eth.contract(address=done.hue, abi=load("HUE").abi),
                 w3.eth.contract(address=done.eshue, abi=load("esHUE").abi), dist, tree, leaves,
                 settler, honest, victim, attacker, buyer)


def send_raw(w3: Web3, wallet: Wallet, call: Any) -> TxReceipt:
    """What the attacker can do alone: sign ``call`` with its key, fees from the node, a fixed gas limit; send."""
    base = int(w3.eth.get_block("latest")["baseFeePerGas"])
    tx = call.build_transaction({"from": wallet.address, "gas": ATTACK_GAS, "chainId": w3.eth.chain_id,
                                 "nonce": w3.eth.get_transaction_count(wallet.address),  # type: ignore[arg-type]
                                 "maxFeePerGas": 2 * base + 10**9, "maxPriorityFeePerGas": 10**9})
    signed = Account.sign_transaction(tx, wallet.key_hex)
    return w3.eth.wait_for_transaction_receipt(w3.eth.send_raw_transaction(signed.raw_transaction), timeout=30)


def reverts(chain: Chain, wallet: Wallet, call: Any, reason: str) -> None:
    """``call`` from ``wallet`` reverts with ``reason`` when read, and fails when mined, changing nothing."""
    with pytest.raises(Exception) as err:  # web3's ContractLogicError, carrying the node's revert message
        call.call({"from": wallet.address})
    assert reason in str(err.value), str(err.value)
    before = chain.state()
    receipt = send_raw(chain.w3, wallet, call)
    assert receipt["status"] == 0, f"{reason!r}: the transaction was mined as a success"
    assert chain.state() == before


def test_a_miner_key_cannot_post_a_root_nor_take_the_settlers_or_a_minters_role(chain: Chain) -> None:
    a, dist = chain.attacker, chain.dist
    own = MerkleTree.of([(a.address, 10**9 * ONE), (chain.buyer.address, 1)])
    root = bytes.fromhex(own.root[2:])
    reverts(chain, a, dist.functions.post(EPOCH + 1, root, 10**9 * ONE + 1, 0, 0),
            "RewardsDistributor: not the settlement key")
    reverts(chain, a, dist.functions.post(EPOCH, root, 10**9 * ONE + 1, 0, 0),
            "RewardsDistributor: not the settlement key")
    reverts(chain, a, dist.functions.setSettler(a.address), "RewardsDistributor: not the owner")
    reverts(chain, a, chain.hue.functions.setMinter(a.address, True), "HUE: not the owner")
    reverts(chain, a, chain.eshue.functions.setMinter(a.address, True), "esHUE: not the owner")
    reverts(chain, a, chain.eshue.functions.setProtocol(a.address, True), "esHUE: not the owner")


def test_claims_beyond_the_attackers_own_leaf_revert(chain: Chain) -> None:
    a, v, dist = chain.attacker, chain.victim, chain.dist
    mine, theirs = chain.leaves[a.address], chain.leaves[v.address]
    for amount, proof in ((mine + 1, chain.proof(a)), (mine * 10, chain.proof(a)),  # more than its leaf
                          (theirs, chain.proof(v)), (theirs, chain.proof(a))):  # the victim's leaf, paid to itself
        reverts(chain, a, dist.functions.claim(EPOCH, a.address, amount, proof), "RewardsDistributor: bad proof")
    reverts(chain, a, dist.functions.claim(EPOCH + 1, a.address, mine, chain.proof(a)),
            "RewardsDistributor: no root for this epoch")


def test_a_leaf_pays_once_whoever_sends_it(chain: Chain) -> None:
    a, dist = chain.attacker, chain.dist
    call = dist.functions.claim(EPOCH, a.address, chain.leaves[a.address], chain.proof(a))
    assert send_raw(chain.w3, a, call)["status"] == 1, "the attacker's own leaf is a fair claim"
    assert chain.eshue.functions.balanceOf(a.address).call() == chain.leaves[a.address]
    reverts(chain, a, call, "RewardsDistributor: already claimed")
    reverts(chain, chain.buyer, call, "RewardsDistributor: already claimed")


def test_hue_and_eshue_cannot_be_minted_directly(chain: Chain) -> None:
    a = chain.attacker
    reverts(chain, a, chain.hue.functions.mint(a.address, 1), "HUE: not a minter")
    reverts(chain, a, chain.hue.functions.mint(a.address, 10**9 * ONE), "HUE: not a minter")
    reverts(chain, a, chain.eshue.functions.mint(a.address, 1), "esHUE: not a minter")


def test_eshue_cannot_be_sold(chain: Chain) -> None:
    a, b, eshue = chain.attacker, chain.buyer, chain.eshue
    if not chain.dist.functions.isClaimed(EPOCH, a.address, chain.leaves[a.address]).call():
        send_raw(chain.w3, a, chain.dist.functions.claim(EPOCH, a.address, chain.leaves[a.address], chain.proof(a)))
    held = eshue.functions.balanceOf(a.address).call()
    assert held == chain.leaves[a.address]
    reverts(chain, a, eshue.functions.transfer(b.address, held), "esHUE: transfers only by the protocol's contracts")
    assert send_raw(chain.w3, a, eshue.functions.approve(b.address, held))["status"] == 1
    reverts(chain, b, eshue.functions.transferFrom(a.address, b.address, held),
            "esHUE: transfers only by the protocol's contracts")
    assert eshue.functions.balanceOf(b.address).call() == 0


def test_afterwards_the_honest_claim_pays_exactly_its_leaf(chain: Chain) -> None:
    h, dist = chain.honest, chain.dist
    paid = claim(chain.w3, h, dist, Leaf(EPOCH, h.address, chain.leaves[h.address],
                                         chain.tree.proof(h.address, chain.leaves[h.address])))
    assert paid.amount == paid.balance == chain.leaves[h.address]
    assert chain.eshue.functions.balanceOf(h.address).call() == chain.leaves[h.address]
    assert chain.eshue.functions.balanceOf(chain.attacker.address).call() == chain.leaves[chain.attacker.address]
    assert chain.hue.functions.balanceOf(chain.attacker.address).call() == 0

    claimed = dist.functions.claimedTotal(EPOCH).call()
    events = dist.events.Claimed.get_logs(from_block=0, to_block="latest")
    assert claimed == sum(int(e["args"]["amount"]) for e in events) <= dist.functions.totals(EPOCH).call()
    assert chain.eshue.functions.totalSupply().call() == claimed, "esHUE exists only as claimed leaves"
    assert chain.hue.functions.minted().call() == claimed == chain.hue.functions.balanceOf(chain.eshue.address).call()
    assert chain.dist.functions.settler().call() == chain.settler.address
