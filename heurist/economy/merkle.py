"""Epoch payout roots: OpenZeppelin's ``StandardMerkleTree`` of ``(address, uint256)``, rebuilt in Python.

Why a copy of a JavaScript library. An epoch closes with one root per payout list; the RewardsDistributor checks a
claim with OpenZeppelin's Solidity ``MerkleProof.verify``, and wallets or scripts may rebuild the tree with
``StandardMerkleTree.of(values, ["address", "uint256"])`` from ``@openzeppelin/merkle-tree`` 1.x. All three must
agree to the bit, so this follows OZ's ``src/core.ts`` and ``src/standard.ts``: a leaf is
``keccak256(keccak256(abi.encode(address, amount)))`` (the double hash keeps a 64-byte leaf from posing as an inner
node); leaves are sorted ascending as bytes and laid into an array of 2n-1 nodes from its end
(``tree[2n-2-i] = sorted[i]``); node i is ``keccak256(sort(tree[2i+1], tree[2i+2]))``; the root is ``tree[0]``
and a proof is the siblings met walking up. tests/test_economy_merkle.py checks roots and every proof against the
npm package itself (1, 2, 3, 7 and 33 leaves, amounts 0 to 2^256-1, duplicates) and against OZ's README example.

Edge cases, as OZ has them. No values: ``MerkleError`` (OZ throws too); an epoch without payouts has no tree, and its
callers record root None. The same address twice is two leaves, both claimable; the same (address, amount) twice is
two equal leaves, and ``proof(address, amount)`` proves the last of them, like OZ's ``getProof(value)``
(``proof_at(i)`` proves value i, like ``getProof(i)``). Addresses are 0x and 40 hex digits, all-lowercase,
all-uppercase or EIP-55 checksummed (a mixed case with a wrong checksum is refused as a likely typo); case does not
change the leaf. Amounts are ints, 0 <= amount < 2^256.

Speed: hashing is eth-hash's ``keccak`` (about 9 us a call here: two a leaf, one an inner node); ``leaf_hash`` encodes
with ``eth_abi.encode``, and a whole tree packs the same two ABI words itself (``_packed_leaf``), since ``encode``
costs 30 us a leaf. About 3 s for 100,000 payouts on this machine's 2 cores, linear (``heurist bench epoch``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from eth_abi import encode
from eth_hash.auto import keccak
from eth_utils import is_checksum_address, is_checksum_formatted_address

from heurist.economy.amounts import UINT256_MAX
from heurist.errors import HeuristError

_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")


class MerkleError(HeuristError):
    """A payout list cannot make a Merkle tree, or a leaf is not in one."""


def _address(address: object, checksum: bool = True) -> bytes:
    """The 20 bytes of a hex address; refuses junk and (``checksum``) a mixed case whose EIP-55 checksum is wrong."""
    if not isinstance(address, str) or not _ADDRESS.fullmatch(address):
        raise MerkleError(f"address {address!r} is not an address: give 0x and 40 hex digits")
    if checksum and is_checksum_formatted_address(address) and not is_checksum_address(address):
        raise MerkleError(f"address {address!r} has a wrong EIP-55 checksum: give it checksummed or in lowercase")
    return bytes.fromhex(address[2:])


def _amount(amount: object, address: object) -> int:
    if isinstance(amount, bool) or not isinstance(amount, int) or not 0 <= amount <= UINT256_MAX:
        raise MerkleError(f"amount {amount!r} for {address!r} must be an int of base units, 0 <= amount < 2**256")
    return amount


def leaf_hash(address: str, amount: int) -> bytes:
    """OZ's leaf of ``(address, amount)``: keccak256(keccak256(abi.encode(address, uint256)))."""
    encoded = encode(["address", "uint256"], [_address(address).hex(), _amount(amount, address)])
    return keccak(keccak(encoded))


def _packed_leaf(address: str, amount: int) -> bytes:
    """``leaf_hash`` for bulk: abi.encode of two static words is the 20 address bytes left-padded to 32, then the
    amount as 32 big-endian bytes; packing them here saves ``eth_abi.encode``'s 30 us a leaf (3 s a 100,000-payout
    epoch). The payouts come from the book, already EIP-55, so their checksums are not checked again (140 us a
    leaf, 14 s an epoch of 100,000). tests/test_economy_merkle.py holds the two equal."""
    return keccak(keccak(bytes(12) + _address(address, checksum=False) + _amount(amount, address).to_bytes(32, "big")))


def _hash_pair(a: bytes, b: bytes) -> bytes:
    return keccak(a + b if a <= b else b + a)


def _node(value: str | bytes, what: str) -> bytes:
    try:
        node = value if isinstance(value, bytes) else bytes.fromhex(value.removeprefix("0x"))
    except (ValueError, AttributeError):
        node = b""
    if len(node) != 32:
        raise MerkleError(f"{what} {value!r} is not 32 bytes: give 0x and 64 hex digits")
    return node


def verify(root: str | bytes, address: str, amount: int, proof: Sequence[str | bytes]) -> bool:
    """Whether ``proof`` takes the leaf of ``(address, amount)`` to ``root``, as Solidity's MerkleProof.verify."""
    computed = leaf_hash(address, amount)
    for sibling in proof:
        computed = _hash_pair(computed, _node(sibling, "proof node"))
    return computed == _node(root, "root")


@dataclass(frozen=True)
class MerkleTree:
    """OZ's StandardMerkleTree of ``(address, uint256)`` values (see the module docstring).

    ``leaves[i]`` is the leaf hash of ``values[i]`` (input order); ``tree`` is OZ's node array, root first."""

    values: tuple[tuple[str, int], ...]
    leaves: tuple[bytes, ...] = field(repr=False)
    tree: tuple[bytes, ...] = field(repr=False)
    tree_index: tuple[int, ...] = field(repr=False)  # where values[i]'s leaf sits in ``tree``
    lookup: dict[bytes, int] = field(repr=False, compare=False)  # leaf hash -> the last value index with it

    @classmethod
    def of(cls, values: Sequence[tuple[str, int]]) -> MerkleTree:
        """The tree of ``values``; MerkleError if empty or if an address or amount is invalid (named)."""
        if not values:
            raise MerkleError("no payouts to put in a Merkle tree: an epoch without payouts has no root (None)")
        leaves = tuple(_packed_leaf(a, v) for a, v in values)
        order = sorted(range(len(leaves)), key=leaves.__getitem__)  # stable, as OZ's sort of hashed values
        size = 2 * len(leaves) - 1
        tree: list[bytes] = [b""] * (size - len(leaves)) + [leaves[i] for i in reversed(order)]
        for i in range(size - len(leaves) - 1, -1, -1):
            left, right = tree[2 * i + 1], tree[2 * i + 2]
            tree[i] = keccak(left + right if left <= right else right + left)
        tree_index = [0] * len(leaves)
        for position, value_index in enumerate(order):
            tree_index[value_index] = size - 1 - position
        return cls(
            values=tuple((a, v) for a, v in values),
            leaves=leaves,
            tree=tuple(tree),
            tree_index=tuple(tree_index),
            lookup={leaf: i for i, leaf in enumerate(leaves)},
        )

    @property
    def root(self) -> str:
        return "0x" + self.tree[0].hex()

    def proof_at(self, index: int) -> list[str]:
        """The proof of ``values[index]`` (OZ's ``getProof(index)``): sibling hashes from the leaf up."""
        if not 0 <= index < len(self.values):
            raise MerkleError(f"index {index} is not a value of this tree: it has {len(self.values)} values")
        node, proof = self.tree_index[index], []
        while node > 0:
            proof.append("0x" + self.tree[node - 1 if node % 2 == 0 else node + 1].hex())
            node = (node - 1) // 2
        return proof

    def proof(self, address: str, amount: int) -> list[str]:
        """The proof of the leaf ``(address, amount)`` (the last such value if it repeats), as OZ's getProof."""
        index = self.lookup.get(leaf_hash(address, amount))
        if index is None:
            raise MerkleError(f"({address}, {amount}) is not a leaf of the tree with root {self.root}")
        return self.proof_at(index)
