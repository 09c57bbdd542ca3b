"""Claiming one payout leaf on chain with its Merkle proof, checked first so that a claim that would fail costs nothing.

Where the proof comes from. The economy database (``heurist.economy.epochs.proof``) on the operator's side, or a
file holding what ``heurist proof ADDRESS --epoch N --json`` printed, so a miner with no access to the database
claims with the file someone sent it, and checks it: the proof is verified here against the root ON CHAIN, not the
one in the file, with the same hashing as the contract (``heurist.economy.merkle.verify``).

Why check before sending. The distributor would revert a bad proof, a second claim or a claim past the epoch's
total, but a mined revert still costs its gas. Each is read first (``roots``, ``isClaimed``, ``totals`` and
``claimedTotal``: free ``eth_call``s) and refused with what to do; only a claim the chain would accept is sent.
Anyone may send a claim; it always pays the leaf's address: esHUE for an epoch, HUE for the TGE (epoch -1).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError
from web3 import Web3

from heurist.economy.merkle import MerkleError, verify
from heurist.economy.service import Economy
from heurist.identity import Wallet
from heurist.settlement.artifacts import load
from heurist.settlement.chain import SettlementError, event_at, node_errors, transact, tx_hex
from heurist.settlement.settle import EMPTY_ROOT, TGE_EPOCH

PROOF_COMMAND = "heurist proof ADDRESS --epoch N --json"


class ProofFile(BaseModel):
    """What ``heurist proof --json`` prints (``epoch`` and ``root`` optional: the epoch is --epoch's)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    address: str
    amount: str | int
    proof: list[str]
    root: str | None = None
    epoch: int | None = None


@dataclass(frozen=True)
class Leaf:
    """One payout to claim: ``amount`` base units to ``address`` in ``epoch``, and its proof."""

    epoch: int
    address: str
    amount: int
    proof: list[str]


@dataclass(frozen=True)
class Claimed:
    epoch: int
    address: str
    amount: int
    token: str  # "esHUE", or "HUE" for the TGE
    balance: int  # the address's balance of ``token`` after the claim
    tx: str
    block: int
    gas_used: int

    def as_dict(self) -> dict[str, Any]:
        return {k: str(v) if k in ("amount", "balance") else v for k, v in asdict(self).items()}


def leaf_from_file(path: Path, epoch: int, address: str | None = None) -> Leaf:
    """The leaf in a file of ``heurist proof --json`` output (its last line of JSON), checked to be for ``epoch``
    (and ``address``, if given)."""
    try:
        lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
        data = ProofFile.model_validate(json.loads(lines[-1] if lines else ""))
    except OSError as err:
        raise SettlementError(f"--proof {path}: cannot read it ({err.strerror})") from None
    except (ValueError, ValidationError) as err:
        why = (f"{'.'.join(map(str, err.errors()[0]['loc'])) or 'file'}: {err.errors()[0]['msg']}"
               if isinstance(err, ValidationError) else "not JSON")
        raise SettlementError(f"--proof {path}: {why}; give the JSON that `{PROOF_COMMAND}` prints") from None
    if data.epoch is not None and data.epoch != epoch:
        raise SettlementError(f"--proof {path} is for epoch {data.epoch}, not --epoch {epoch}: get epoch {epoch}'s "
                              f"with `heurist proof {data.address} --epoch {epoch} --json`")
    amount = str(data.amount)
    if not re.fullmatch(r"\d+", amount):
        raise SettlementError(f"--proof {path}: amount {data.amount!r} is not a whole number of base units")
    leaf = Leaf(epoch, _address(data.address, f"--proof {path}: address"), int(amount), list(data.proof))
    if address is not None and _address(address, "--address") != leaf.address:
        raise SettlementError(f"--proof {path} is {leaf.address}'s, not --address {address}'s: give that "
                              "address's proof, or leave --address out")
    return leaf


def leaf_from_book(economy: Economy, address: str, epoch: int) -> Leaf:
    """The leaf of ``address`` in ``epoch`` with its proof, from the economy database."""
    from heurist.economy.epochs import proof

    found = proof(economy, address, epoch)
    return Leaf(epoch, found["address"], int(found["amount"]), list(found["proof"]))


@node_errors("claim")
def check(distributor: Any, leaf: Leaf) -> str:
    """Refuse a claim the distributor would revert (see the module docstring); the epoch's root on chain."""
    root = "0x" + bytes(distributor.functions.roots(leaf.epoch).call()).hex()
    what = f"claim: epoch {leaf.epoch}"
    if root == EMPTY_ROOT:
        raise SettlementError(f"{what} has no root on chain yet: its settlement key must post it (`heurist settle`)"
                              "; nothing was sent")
    try:
        proven = verify(root, leaf.address, leaf.amount, leaf.proof)
    except MerkleError as err:
        raise SettlementError(f"{what}: the proof is malformed ({err}); nothing was sent") from None
    if not proven:
        raise SettlementError(f"{what}: the proof of {leaf.amount} base units to {leaf.address} does not lead to the "
                              f"root on chain, {root}; nothing was sent. Get a fresh proof with `heurist proof "
                              f"{leaf.address} --epoch {leaf.epoch} --json`")
    if distributor.functions.isClaimed(leaf.epoch, leaf.address, leaf.amount).call():
        raise SettlementError(f"{what}: {leaf.address}'s {leaf.amount} base units are already claimed "
                              f"({_claimed_at(distributor, leaf)}); nothing was sent")
    left = distributor.functions.totals(leaf.epoch).call() - distributor.functions.claimedTotal(leaf.epoch).call()
    if leaf.amount > left:
        raise SettlementError(f"{what}: only {left} base units of its posted total are unclaimed, less than "
                              f"{leaf.amount}: the posted total is wrong, tell the operator; nothing was sent")
    return root


@node_errors("claim")
def claim(w3: Web3, wallet: Wallet, distributor: Any, leaf: Leaf) -> Claimed:
    """Check ``leaf`` (``check``), then send its claim from ``wallet`` (who pays the gas; the leaf's address is
    paid). The balance after is read from the token the epoch pays."""
    check(distributor, leaf)
    proof = [bytes.fromhex(p.removeprefix("0x")) for p in leaf.proof]
    receipt = transact(w3, wallet, distributor.functions.claim(leaf.epoch, leaf.address, leaf.amount, proof),
                       what=f"claim: epoch {leaf.epoch}")
    name = "HUE" if leaf.epoch == TGE_EPOCH else "esHUE"
    token = w3.eth.contract(address=(distributor.functions.hue() if name == "HUE"
                                     else distributor.functions.eshue()).call(), abi=load(name).abi)
    return Claimed(leaf.epoch, leaf.address, leaf.amount, name, int(token.functions.balanceOf(leaf.address).call()),
                   tx_hex(receipt), int(receipt["blockNumber"]), int(receipt["gasUsed"]))


def _address(value: str, what: str) -> str:
    if not Web3.is_address(value):
        raise SettlementError(f"{what} {value!r} is not an address: give 0x and 40 hex digits")
    return str(Web3.to_checksum_address(value))


def _claimed_at(distributor: Any, leaf: Leaf) -> str:
    return event_at(distributor.events.Claimed, {"epoch": leaf.epoch, "account": leaf.address},
                    lambda log: int(log["args"]["amount"]) == leaf.amount)
