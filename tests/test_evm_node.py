"""The test EVM node itself (tests/fixtures/evm_node.py): it answers over HTTP with chain id 1337, and a funded key
moves value with a transaction signed here, locally, with nonce, gas and EIP-1559 fees read from the node (what the
settlement commands do against zkSync Era). If this fails, the settlement tests over HTTP cannot mean anything."""

from __future__ import annotations

from eth_account import Account
from web3 import Web3

from heurist.identity import Wallet
from tests.fixtures.evm_node import EvmNode


def test_node_answers_chain_id_1337_over_http(evm_node: EvmNode) -> None:
    assert evm_node.rpc("eth_chainId") == hex(1337)
    assert evm_node.chain_id == 1337
    assert Web3(Web3.HTTPProvider(evm_node.url)).eth.chain_id == 1337
    assert evm_node.start_s < 30, f"ganache took {evm_node.start_s:.1f} s to start"


def test_funded_key_sends_a_locally_signed_transfer(evm_node: EvmNode) -> None:
    w3 = Web3(Web3.HTTPProvider(evm_node.url))
    sender, recipient = evm_node.wallet(0), Wallet.create()
    value = 12_345_678_901_234_567  # wei, exact int
    before = w3.eth.get_balance(sender.address)  # type: ignore[arg-type]
    assert before > 10**20, "the deterministic accounts start with 1000 ETH"

    base_fee = int(w3.eth.get_block("latest")["baseFeePerGas"])
    tip = int(w3.eth.max_priority_fee)
    tx = {"chainId": w3.eth.chain_id, "nonce": w3.eth.get_transaction_count(sender.address),  # type: ignore[arg-type]
          "from": sender.address, "to": recipient.address, "value": value,
          "maxPriorityFeePerGas": tip, "maxFeePerGas": 2 * base_fee + tip}
    tx["gas"] = w3.eth.estimate_gas(tx)  # type: ignore[arg-type]
    assert tx["gas"] == 21_000
    del tx["from"]
    signed = Account.sign_transaction(tx, sender.key_hex)
    receipt = w3.eth.wait_for_transaction_receipt(w3.eth.send_raw_transaction(signed.raw_transaction), timeout=30)

    assert receipt["status"] == 1
    assert receipt["from"].lower() == sender.address.lower()
    assert w3.eth.get_balance(recipient.address) == value  # type: ignore[arg-type]
    fee = receipt["gasUsed"] * receipt["effectiveGasPrice"]
    assert w3.eth.get_balance(sender.address) == before - value - fee  # type: ignore[arg-type]
