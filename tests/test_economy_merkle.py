"""heurist.economy.merkle against OpenZeppelin's own JavaScript ``StandardMerkleTree`` (npm, installed once per
module) and against hand-built expectations: same roots, same node arrays, same proofs, and proofs that verify."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from eth_abi import encode
from eth_hash.auto import keccak
from eth_utils import to_checksum_address

from heurist.economy.merkle import MerkleError, MerkleTree, leaf_hash, verify
from heurist.errors import HeuristError

MAX = 2**256 - 1
BIG = 10**18 * 12345
README = [  # OpenZeppelin's README example; its root, printed by @openzeppelin/merkle-tree 1.0.8
    ("0x1111111111111111111111111111111111111111", 5000000000000000000),
    ("0x2222222222222222222222222222222222222222", 2500000000000000000),
]
README_ROOT = "0xd4dee0beab2d53f2cc83e567171bd2820e49898130a22622b10ead383e90bd77"

NODE_SCRIPT = """
const { StandardMerkleTree } = require("@openzeppelin/merkle-tree");
const sets = JSON.parse(require("fs").readFileSync(0, "utf8"));
process.stdout.write(JSON.stringify(sets.map(values => {
  const vs = values.map(([a, v]) => [a, BigInt(v)]);
  const t = StandardMerkleTree.of(vs, ["address", "uint256"]);
  const byIndex = vs.map((_, i) => t.getProof(i));
  return { root: t.root, tree: t.dump().tree, byIndex, byValue: vs.map(v => t.getProof(v)) };
})));
"""

Values = list[tuple[str, int]]


def address(rng: random.Random, style: str = "checksum") -> str:
    checksummed = to_checksum_address(rng.randbytes(20))
    return {"checksum": checksummed, "lower": checksummed.lower(), "upper": "0x" + checksummed[2:].upper()}[style]


def flip(node: str) -> str:
    """``node`` with its last hex digit changed."""
    return node[:-1] + ("1" if node[-1] == "0" else "0")


def value_sets() -> list[Values]:
    rng = random.Random(15)
    specials = [0, 1, BIG, MAX]

    def some(n: int) -> Values:
        styles = ["checksum", "lower", "upper"]
        return [
            (address(rng, styles[i % 3]), specials[i] if i < 4 else rng.getrandbits(rng.choice([8, 64, 256])))
            for i in range(n)
        ]

    seven = some(5)
    seven += [(seven[0][0], 7), (seven[1][0].lower(), seven[1][1])]  # same address twice; the same pair twice
    many = some(30)
    many += [(many[3][0], 0), (many[3][0], 0), (many[5][0].upper().replace("0X", "0x"), many[5][1])]
    return [some(1), some(2), some(3), seven, many, list(README)]


@pytest.fixture(scope="module")
def oz_merkle(tmp_path_factory: pytest.TempPathFactory) -> Callable[[list[Values]], list[dict[str, Any]]]:
    """Runs OpenZeppelin's StandardMerkleTree (npm @openzeppelin/merkle-tree@1, installed once) on value sets."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node/npm not installed: cannot cross-check against @openzeppelin/merkle-tree")
    work: Path = tmp_path_factory.mktemp("oz-merkle")
    (work / "package.json").write_text('{"name": "oz-merkle-check", "private": true}')
    try:
        done = subprocess.run(
            ["npm", "install", "@openzeppelin/merkle-tree@1", "--no-audit", "--no-fund", "--silent"],
            cwd=work,
            capture_output=True,
            text=True,
            timeout=180,
        )
    except subprocess.TimeoutExpired:
        pytest.skip("npm install @openzeppelin/merkle-tree@1 took over 180 s: registry unreachable?")
    if done.returncode != 0:
        pytest.skip(f"npm install @openzeppelin/merkle-tree@1 failed (registry unreachable?): {done.stderr[-500:]}")
    (work / "check.js").write_text(NODE_SCRIPT)

    def run(sets: list[Values]) -> list[dict[str, Any]]:
        payload = json.dumps([[[a, str(v)] for a, v in values] for values in sets])
        out = subprocess.run(
            ["node", "check.js"], cwd=work, input=payload, capture_output=True, text=True, timeout=60, check=True
        )
        result: list[dict[str, Any]] = json.loads(out.stdout)
        return result

    return run


def test_matches_openzeppelin_js(oz_merkle: Callable[[list[Values]], list[dict[str, Any]]]) -> None:
    sets = value_sets()
    js = oz_merkle(sets)
    assert js[-1]["root"] == README_ROOT
    for values, expected in zip(sets, js, strict=True):
        tree = MerkleTree.of(values)
        assert tree.root == expected["root"], f"{len(values)} leaves"
        assert ["0x" + node.hex() for node in tree.tree] == expected["tree"]
        for i, (addr, amount) in enumerate(values):
            proof = tree.proof_at(i)
            assert proof == expected["byIndex"][i], f"{len(values)} leaves, value {i}"
            assert tree.proof(addr, amount) == expected["byValue"][i]
            assert verify(tree.root, addr, amount, proof)
            assert not verify(tree.root, addr, amount - 1 if amount else 1, proof)
            if proof:
                assert not verify(tree.root, addr, amount, [*proof[:-1], flip(proof[-1])])
    lengths = [len(v) for v in sets]
    assert lengths[:5] == [1, 2, 3, 7, 33]


def test_readme_vector_and_layout_by_hand() -> None:
    """OZ's layout written out for 3 leaves s0 < s1 < s2: tree = [H(H(s0, s1), s2), H(s1, s0), s2, s1, s0]."""
    assert MerkleTree.of(README).root == README_ROOT
    rng = random.Random(3)
    values = [(address(rng), rng.getrandbits(64)) for _ in range(3)]
    tree = MerkleTree.of(values)
    s0, s1, s2 = sorted(leaf_hash(a, v) for a, v in values)

    def pair(a: bytes, b: bytes) -> bytes:
        return keccak(min(a, b) + max(a, b))

    assert tree.tree == (pair(pair(s0, s1), s2), pair(s1, s0), s2, s1, s0)
    assert tree.proof(*values[[leaf_hash(a, v) for a, v in values].index(s0)]) == ["0x" + s1.hex(), "0x" + s2.hex()]


def test_single_leaf_root_is_the_leaf() -> None:
    addr = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
    tree = MerkleTree.of([(addr, 42)])
    assert tree.root == "0x" + leaf_hash(addr, 42).hex()
    assert leaf_hash(addr, 42) == keccak(keccak(encode(["address", "uint256"], [addr, 42])))
    assert tree.proof(addr, 42) == [] and verify(tree.root, addr, 42, [])
    assert not verify(tree.root, addr, 43, [])


def test_every_leaf_of_100_verifies_and_tampering_fails() -> None:
    rng = random.Random(100)
    values = [(address(rng, rng.choice(["checksum", "lower"])), rng.getrandbits(200)) for _ in range(100)]
    tree = MerkleTree.of(values)
    other = MerkleTree.of(values[:99])
    for i, (addr, amount) in enumerate(values):
        assert tree.leaves[i] == keccak(keccak(encode(["address", "uint256"], [addr, amount])))  # fast == eth_abi
        proof = tree.proof(addr, amount)
        assert 6 <= len(proof) <= 7 and verify(tree.root, addr, amount, proof)
        assert verify(tree.root, addr.upper().replace("0X", "0x"), amount, [bytes.fromhex(p[2:]) for p in proof])
        assert not verify(tree.root, addr, amount + 1, proof)
        assert not verify(tree.root, values[(i + 1) % 100][0], amount, proof)
        assert not verify(tree.root, addr, amount, proof[:-1])
        assert not verify(tree.root, addr, amount, [proof[1], proof[0], *proof[2:]])
        assert not verify(other.root, addr, amount, proof)


def test_duplicates_are_separate_leaves() -> None:
    rng = random.Random(7)
    a, b = address(rng), address(rng)
    values = [(a, 5), (b, 1), (a, 6), (b.lower(), 1)]
    tree = MerkleTree.of(values)
    assert len(tree.tree) == 7 and tree.leaves[1] == tree.leaves[3]
    assert tree.tree_index[1] != tree.tree_index[3]  # two leaves (equal hashes, maybe siblings)
    assert tree.proof(b, 1) == tree.proof_at(3)  # the last equal value, as OZ's leafLookup
    for i, (addr, amount) in enumerate(values):
        assert verify(tree.root, addr, amount, tree.proof_at(i))


def test_bad_input_is_refused_by_name() -> None:
    good = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
    bad_checksum = good.replace("aA", "Aa", 1)
    for addr in ["0x1234", good[2:], "0x" + "g" * 40, 12345, good + "00"]:
        with pytest.raises(MerkleError, match="address") as caught:
            MerkleTree.of([(addr, 1)])  # type: ignore[list-item]
        assert repr(addr) in str(caught.value)
    with pytest.raises(MerkleError, match="EIP-55"):
        leaf_hash(bad_checksum, 1)
    for amount in [-1, 2**256, 1.5, True, "100"]:
        with pytest.raises(MerkleError, match="amount") as caught:
            MerkleTree.of([(good, amount)])  # type: ignore[list-item]
        assert repr(amount) in str(caught.value)
    with pytest.raises(MerkleError, match="no payouts") as empty:
        MerkleTree.of([])
    assert isinstance(empty.value, HeuristError)
    tree = MerkleTree.of([(good, 1), (good, 2)])
    with pytest.raises(MerkleError, match="not a leaf"):
        tree.proof(good, 3)
    with pytest.raises(MerkleError, match="index 2"):
        tree.proof_at(2)
    with pytest.raises(MerkleError, match="root"):
        verify("0x1234", good, 1, [])
    with pytest.raises(MerkleError, match="proof node"):
        verify(tree.root, good, 1, ["0xzz"])


def test_bulk_leaves_are_the_abi_encoded_leaves() -> None:
    rng = random.Random(11)
    values = [(address(rng), rng.getrandbits(rng.choice([1, 64, 256]))) for _ in range(500)]
    assert MerkleTree.of(values).leaves == tuple(leaf_hash(a, v) for a, v in values)
