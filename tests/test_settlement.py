"""Settling the economy on chain (heurist.settlement): deploy, post every closed epoch's root, claim with proofs.

On web3's in-process EthereumTesterProvider (py-evm), with a fresh heurist key funded from the tester's first
account, and the economy on SQLite and PostgreSQL (the ``engine`` fixture). The economy is the one
tests/test_economy_epochs.py builds (its ``World`` and ``RULES``): a TGE paying two testnet miners (epoch -1, liquid
HUE), epoch E-1 without payouts (no root), and epoch E paying a node operator and a staker of its node (a 25 %
bribe) as esHUE. Then: every root posted oldest first with its total, issued and burned readable on chain; a
second run posting nothing; each claim paying exactly its leaf; every refusal (bad proof, second claim, over the
total, unclosed or posted epoch, book and chain disagreeing) made before anything is sent, so the nonce does not
move. The commands over HTTP (ganache, tests/fixtures/evm_node.py) are tested apart.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from web3 import EthereumTesterProvider, Web3

from heurist.catalog import JobKind
from heurist.economy.actions import SetBribe
from heurist.economy.amounts import ONE
from heurist.economy.epochs import close_epoch
from heurist.economy.merkle import MerkleTree
from heurist.economy.service import Economy
from heurist.economy.tge import run_tge
from heurist.identity import Wallet
from heurist.settings import Settings
from heurist.settlement.artifacts import load
from heurist.settlement.chain import SettlementError, connect, contract, transact
from heurist.settlement.claim import Leaf, check, claim, leaf_from_book, leaf_from_file
from heurist.settlement.deploy import Deployment, deploy, record
from heurist.settlement.settle import settle
from tests.fixtures.economy import T0_MS, MsClock, add_node
from tests.test_economy_epochs import END, RULES, E, H, World, payouts
from tests.test_economy_tge import _points

HEURIST = [sys.executable, "-m", "heurist.cli.main"]


@dataclass
class Chain:
    w3: Web3
    owner: Wallet  # deployed the contracts; the settlement key
    deployment: Deployment
    distributor: Any

    def fund(self, wallet: Wallet | None = None) -> Wallet:
        wallet = wallet or Wallet.create()
        self.w3.eth.send_transaction({"from": self.w3.eth.accounts[0], "to": wallet.address, "value": 10**20})
        return wallet

    def nonce(self, wallet: Wallet) -> int:
        return int(self.w3.eth.get_transaction_count(wallet.address))  # type: ignore[arg-type]

    def token(self, name: str) -> Any:
        address = self.deployment.hue if name == "HUE" else self.deployment.eshue
        return self.w3.eth.contract(address=address, abi=load(name).abi)  # type: ignore[arg-type]

    def root(self, epoch: int) -> str:
        return "0x" + bytes(self.distributor.functions.roots(epoch).call()).hex()


@pytest.fixture
def chain() -> Chain:
    w3 = connect(Web3(EthereumTesterProvider()))
    funded = Chain(w3, Wallet.create(), None, None)  # type: ignore[arg-type]
    funded.fund(funded.owner)
    funded.deployment = deploy(w3, funded.owner)
    funded.distributor = contract(w3, "RewardsDistributor", funded.deployment.distributor, "distributor")
    return funded


@dataclass
class Closed:
    """The economy after a TGE and the closes of E-1 (no payouts) and E (an operator and its staker paid)."""

    economy: Economy
    op: Wallet  # a node: operator reward in E, and TGE image points
    staker: Wallet  # stakes 3,000 HUE on op: its bribe share in E
    llama: Wallet  # TGE text points only
    tge: dict[str, Any]
    before: dict[str, Any]  # E-1's report: no payouts
    report: dict[str, Any]  # E's report


@pytest.fixture
def closed(engine: Engine) -> Closed:
    clock = MsClock(T0_MS - H + 1_000)
    world = World(engine, clock, Economy(engine, RULES, clock=clock))
    op, staker = add_node(engine), Wallet.create()
    llama = add_node(engine)
    at = (T0_MS - 2 * H) / 1000  # testnet points, before the book's first epoch
    _points(engine, op.address, JobKind.IMAGE, 3_000_000, "tge-image", at=at)
    _points(engine, llama.address, JobKind.TEXT, 1_000_000, "tge-text", at=at)
    world.economy.genesis({op.address: 20_000 * ONE, staker.address: 3_000 * ONE})  # the book's start: E-1
    tge = run_tge(world.economy)
    world.at(T0_MS - H + 2_000)
    world.stake(op, op, 20_000 * ONE)
    world.stake(staker, op, 3_000 * ONE)
    world.act(op, SetBribe, node=op.address, bps=2_500)  # from E on: the staker earns a share
    world.points(op, 2_000_000, T0_MS + 5)
    world.uptime(op, E, 100)
    world.at(END)
    before, report = close_epoch(world.economy, E - 1), close_epoch(world.economy, E)
    assert before["merkle_root"] is None and set(payouts(report)) == {op.address, staker.address}
    assert {p["address"] for p in tge["payouts"]} == {op.address, llama.address}
    return Closed(world.economy, op, staker, llama, tge, before, report)


# ------------------------------------------------------------------------------------------------ settle, claim


def test_settle_posts_every_root_oldest_first_then_nothing_and_claims_pay_the_leaves(
        chain: Chain, closed: Closed, migrated_url: str, tmp_path: Path) -> None:
    settler = chain.owner
    done = settle(closed.economy, chain.w3, settler, chain.distributor)
    assert [p.epoch for p in done.posted] == [-1, E], "the TGE, then E; E-1 has no root"
    assert done.posted[0].block < done.posted[1].block, "oldest first"
    assert done.skipped == [(E - 1, "no payouts, so no Merkle root")] and done.on_chain == []

    read = chain.distributor.functions
    tge_total = int(closed.tge["minted"])
    paid = payouts(closed.report)
    assert (chain.root(-1), read.totals(-1).call(), read.issued(-1).call(), read.burned(-1).call()) == (
        closed.tge["merkle_root"], tge_total, tge_total, 0)
    assert (chain.root(E), read.totals(E).call(), read.issued(E).call(), read.burned(E).call()) == (
        closed.report["merkle_root"], sum(paid.values()), int(closed.report["issued"]), int(closed.report["burned"]))
    assert read.issued(E).call() == sum(paid.values()) > 0, "no fees in E: every paid base unit was issued"

    nonce = chain.nonce(settler)
    again = settle(closed.economy, chain.w3, settler, chain.distributor)
    assert (again.posted, again.on_chain) == ([], [-1, E]), "a second run posts nothing"
    assert chain.nonce(settler) == nonce

    # the operator claims its own leaf of E; the staker's is sent by a stranger, with the file `heurist proof` wrote
    operator = chain.fund(closed.op)
    mine = claim(chain.w3, operator, chain.distributor, leaf_from_book(closed.economy, closed.op.address, E))
    assert (mine.token, mine.amount, mine.balance) == ("esHUE", paid[closed.op.address], paid[closed.op.address])
    proof_file = tmp_path / "proof.json"
    shown = subprocess.run([*HEURIST, "proof", closed.staker.address, "--epoch", str(E), "--json"],
                           capture_output=True, text=True, timeout=120,
                           env={**os.environ, "HEURIST_DATABASE_URL": migrated_url})
    assert shown.returncode == 0, shown.stderr
    proof_file.write_text(shown.stdout)
    stranger = chain.fund()
    theirs = claim(chain.w3, stranger, chain.distributor, leaf_from_file(proof_file, E))
    assert (theirs.address, theirs.amount) == (closed.staker.address, paid[closed.staker.address])
    eshue, hue = chain.token("esHUE"), chain.token("HUE")
    assert eshue.functions.balanceOf(closed.staker.address).call() == paid[closed.staker.address]
    assert eshue.functions.balanceOf(stranger.address).call() == 0, "a claim pays the leaf's address"

    # the TGE pays liquid HUE
    tge = claim(chain.w3, operator, chain.distributor, leaf_from_book(closed.economy, closed.op.address, -1))
    tge_paid = {p["address"]: int(p["amount"]) for p in closed.tge["payouts"]}
    assert (tge.token, tge.balance) == ("HUE", tge_paid[closed.op.address])
    assert hue.functions.balanceOf(closed.op.address).call() == tge_paid[closed.op.address]
    assert hue.functions.totalSupply().call() == tge_paid[closed.op.address] + sum(paid.values()), \
        "esHUE is backed: every esHUE claimed minted as much HUE to the esHUE contract"
    assert read.claimedTotal(E).call() == read.totals(E).call()

    # refused before sending: the nonce does not move
    nonce = chain.nonce(operator)
    good = leaf_from_book(closed.economy, closed.llama.address, -1)
    for forged, why in [(Leaf(-1, good.address, good.amount + 1, good.proof), "does not lead to the root on chain"),
                        (Leaf(E, good.address, good.amount, good.proof), "does not lead to the root on chain"),
                        (Leaf(-1, good.address, good.amount, [*good.proof[:-1], "0x" + "11" * 32]),
                         "does not lead to the root on chain"),
                        (Leaf(-1, good.address, good.amount, ["0x12"]), "the proof is malformed"),
                        (leaf_from_book(closed.economy, closed.op.address, E), "are already claimed (tx 0x"),
                        (leaf_from_book(closed.economy, closed.op.address, -1), "are already claimed (tx 0x"),
                        (Leaf(E + 1, good.address, 1, []), "has no root on chain yet")]:
        with pytest.raises(SettlementError, match="nothing was sent") as refused:
            claim(chain.w3, operator, chain.distributor, forged)
        assert why in str(refused.value)
    assert chain.nonce(operator) == nonce, "no refused claim was sent"
    assert claim(chain.w3, operator, chain.distributor, good).balance == good.amount  # the real one still pays


def test_settle_one_epoch_refuses_unclosed_posted_and_disagreeing_roots(chain: Chain, closed: Closed) -> None:
    settler, economy = chain.owner, closed.economy
    nonce = chain.nonce(settler)
    with pytest.raises(SettlementError, match=rf"epoch {E + 1} is not closed yet: .*`heurist epoch close {E + 1}`"):
        settle(economy, chain.w3, settler, chain.distributor, epoch=E + 1)
    stranger = chain.fund()
    with pytest.raises(SettlementError, match=f"{stranger.address} is not the settlement key .* setSettler"):
        settle(economy, chain.w3, stranger, chain.distributor)

    # the chain holds another root for E (another book, another distributor...): stop before posting anything
    other = MerkleTree.of([(closed.op.address, 1), (closed.staker.address, 2)]).root
    transact(chain.w3, settler, chain.distributor.functions.post(E, bytes.fromhex(other[2:]), 3, 3, 0))
    nonce = chain.nonce(settler)
    for one in (None, E):
        with pytest.raises(SettlementError, match=rf"THE CHAIN AND THE BOOK DISAGREE on epoch {E}: .* holds root "
                                                  rf"{other}, the book {closed.report['merkle_root']}\. Nothing"):
            settle(economy, chain.w3, settler, chain.distributor, epoch=one)
    assert chain.nonce(settler) == nonce and chain.root(-1) == "0x" + "00" * 32, "not even the older TGE root"

    posted = settle(economy, chain.w3, settler, chain.distributor, epoch=-1)
    assert [p.epoch for p in posted.posted] == [-1]
    with pytest.raises(SettlementError, match=rf"epoch -1's root {closed.tge['merkle_root']} is already posted "
                                              rf"\(tx {posted.posted[0].tx} / block {posted.posted[0].block}\)"):
        settle(economy, chain.w3, settler, chain.distributor, epoch=-1)
    skipped = settle(economy, chain.w3, settler, chain.distributor, epoch=E - 1)
    assert (skipped.posted, skipped.skipped) == ([], [(E - 1, "no payouts, so no Merkle root")])


def test_settle_refuses_the_tge_before_it_ran(chain: Chain, engine: Engine) -> None:
    economy = Economy(engine, RULES, clock=MsClock())
    with pytest.raises(SettlementError, match=r"the TGE has not run, so epoch -1 has no root: run `heurist tge`"):
        settle(economy, chain.w3, chain.owner, chain.distributor, epoch=-1)
    assert settle(economy, chain.w3, chain.owner, chain.distributor).as_dict() == {
        "posted": [], "already_on_chain": [], "skipped": []}


def test_a_claim_past_the_posted_total_is_refused_before_sending(chain: Chain) -> None:
    a, b = Wallet.create().address, Wallet.create().address
    tree = MerkleTree.of([(a, 5 * ONE), (b, 7 * ONE)])
    transact(chain.w3, chain.owner, chain.distributor.functions.post(7, bytes.fromhex(tree.root[2:]), 11 * ONE,
                                                                     11 * ONE, 0))
    sender, first = chain.fund(), Leaf(7, b, 7 * ONE, tree.proof(b, 7 * ONE))
    assert check(chain.distributor, first) == tree.root
    assert claim(chain.w3, sender, chain.distributor, first).balance == 7 * ONE
    nonce = chain.nonce(sender)
    leaf = Leaf(7, a, 5 * ONE, tree.proof(a, 5 * ONE))
    with pytest.raises(SettlementError, match=rf"only {4 * ONE} base units of its posted total are unclaimed"):
        claim(chain.w3, sender, chain.distributor, leaf)
    assert chain.nonce(sender) == nonce


# ------------------------------------------------------------------------------------------------------- deploy


def test_deploy_wires_the_contracts_and_records_them_keeping_other_lines(chain: Chain, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    d, hue, eshue = chain.deployment, chain.token("HUE"), chain.token("esHUE")
    assert hue.functions.minters(d.eshue).call() and hue.functions.minters(d.distributor).call()
    assert eshue.functions.minters(d.distributor).call() and eshue.functions.protocol(d.distributor).call()
    assert not hue.functions.minters(d.owner).call(), "the owner mints nothing itself"
    assert (chain.distributor.functions.settler().call(), chain.distributor.functions.owner().call()) == (
        chain.owner.address, chain.owner.address)
    assert (chain.distributor.functions.hue().call(), chain.distributor.functions.eshue().call()) == (d.hue, d.eshue)
    assert d.chain_id == chain.w3.eth.chain_id and len(d.txs) == 7

    env = tmp_path / ".env"
    env.write_text("# my network\nHEURIST_DATABASE_URL=postgresql://db/heurist\n"
                   "export HEURIST_SETTLEMENT_HUE=0x0000000000000000000000000000000000000001\nHEURIST_EPOCH_S=60\n")
    env.chmod(0o600)
    assert record(d.env(), env) == []
    assert env.read_text().splitlines() == [
        "# my network", "HEURIST_DATABASE_URL=postgresql://db/heurist", f"HEURIST_SETTLEMENT_HUE={d.hue}",
        "HEURIST_EPOCH_S=60", "", f"HEURIST_SETTLEMENT_ESHUE={d.eshue}",
        f"HEURIST_SETTLEMENT_DISTRIBUTOR={d.distributor}", f"HEURIST_SETTLEMENT_CHAIN_ID={d.chain_id}"]
    assert env.stat().st_mode & 0o777 == 0o600
    read = Settings(_env_file=env)  # type: ignore[call-arg]
    assert (read.settlement_hue, read.settlement_eshue, read.settlement_distributor, read.settlement_chain_id,
            read.epoch_s) == (d.hue, d.eshue, d.distributor, d.chain_id, 60)
    assert record(d.env(), env) == [] and env.read_text().count("HEURIST_SETTLEMENT_") == 4, "idempotent"

    monkeypatch.setenv("HEURIST_SETTLEMENT_DISTRIBUTOR", "0x" + "ab" * 20)
    assert record(d.env(), tmp_path / "new" / ".env") == ["HEURIST_SETTLEMENT_DISTRIBUTOR"]

    settled = deploy(chain.w3, chain.owner, settler=d.hue)
    other = contract(chain.w3, "RewardsDistributor", settled.distributor, "distributor")
    assert other.functions.settler().call() == d.hue != chain.owner.address
    with pytest.raises(SettlementError, match="--settler 'nope' is not an address"):
        deploy(chain.w3, chain.owner, settler="nope")


# ---------------------------------------------------------------------------------- connecting and transacting


def test_connect_names_the_url_and_both_chain_ids(chain: Chain) -> None:
    with pytest.raises(SettlementError, match=r"cannot reach an EVM node at http://127\.0\.0\.1:1 \(Connection "
                                              r"refused\): check the URL and that the node runs"):
        connect("http://127.0.0.1:1")
    with pytest.raises(SettlementError, match=r"https://127\.0\.0\.1:1/\*\*\* ") as hidden:
        connect("https://user:secret@127.0.0.1:1/v2/apikey")  # hosted endpoints hold their key in the URL
    assert "secret" not in str(hidden.value) and "apikey" not in str(hidden.value)
    with pytest.raises(SettlementError, match="is not an http"):
        connect("ws://127.0.0.1:8546")
    actual = chain.w3.eth.chain_id
    with pytest.raises(SettlementError, match=rf"serves chain id {actual}, but HEURIST_SETTLEMENT_CHAIN_ID is 324: "):
        connect(chain.w3, 324)
    assert connect(chain.w3, actual) is chain.w3
    with pytest.raises(SettlementError, match="HEURIST_SETTLEMENT_DISTRIBUTOR: no contract at"):
        contract(chain.w3, "RewardsDistributor", chain.owner.address, "HEURIST_SETTLEMENT_DISTRIBUTOR")
    with pytest.raises(SettlementError, match="HEURIST_SETTLEMENT_DISTRIBUTOR is not set: deploy"):
        contract(chain.w3, "RewardsDistributor", None, "HEURIST_SETTLEMENT_DISTRIBUTOR")
    not_a_distributor = chain.w3.eth.contract(address=chain.deployment.hue, abi=load("RewardsDistributor").abi)
    with pytest.raises(SettlementError, match=r"^settle: the node failed a request \(.*\); check it is up"):
        settle(None, chain.w3, chain.owner, not_a_distributor)  # type: ignore[arg-type]  # fails at settler()


def test_a_malformed_or_secret_bearing_rpc_url_is_refused_without_echoing_its_secrets() -> None:
    """A hosted endpoint's key sits in its URL's path or userinfo: no error may print it, whatever the URL's
    fault (another scheme, a port out of range or not a number, a broken IPv6 host); and none is a traceback."""
    for url, why in [("wss://user:PASSWORD@mainnet.example.io/ws/v3/APIKEY", "is not an http(s) URL"),
                     ("https://mainnet.example.io:99999/v2/APIKEY", "port"),
                     ("https://user:PASSWORD@mainnet.example.io:port/v2/APIKEY", "port"),
                     ("http://[::1/v2/APIKEY", "is not a URL")]:
        with pytest.raises(SettlementError, match="give the node's JSON-RPC endpoint") as refused:
            connect(url)
        said = str(refused.value)
        assert why in said and "APIKEY" not in said and "PASSWORD" not in said, said
    with pytest.raises(SettlementError, match=r"cannot reach an EVM node at http://127\.0\.0\.1/\*\*\* "):
        connect("http://127.0.0.1/v2/APIKEY")  # no port: the scheme's, and a URL like any other


def test_transact_takes_fees_and_chain_id_from_the_node_and_refuses_reverts_unsent(chain: Chain) -> None:
    w3, post = chain.w3, chain.distributor.functions.post
    intruder = chain.fund()
    with pytest.raises(SettlementError, match=r"^post: RewardsDistributor: not the settlement key \(refused by the "
                                              r"node's gas estimate: nothing was sent, no gas spent\)$"):
        transact(w3, intruder, post(3, b"\1" * 32, 1, 1, 0), what="post")
    assert chain.nonce(intruder) == 0
    with pytest.raises(SettlementError, match=r"cannot pay for gas .*: fund that address"):
        transact(w3, Wallet.create(), post(3, b"\1" * 32, 1, 1, 0), what="post")

    base = w3.eth.get_block("latest")["baseFeePerGas"]
    estimate = post(3, b"\1" * 32, 1, 1, 0).estimate_gas({"from": chain.owner.address})
    receipt = transact(w3, chain.owner, post(3, b"\1" * 32, 1, 1, 0))
    sent = w3.eth.get_transaction(receipt["transactionHash"])
    assert (sent["type"], sent["chainId"]) == (2, w3.eth.chain_id)
    assert sent["maxFeePerGas"] == 2 * base + w3.eth.max_priority_fee
    assert sent["gas"] == estimate * 12 // 10 > receipt["gasUsed"], "the node's estimate plus 20 %"


# ---------------------------------------------------------------------------------------------------------- CLI


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HEURIST, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def test_cli_errors_are_one_line_naming_the_fix(tmp_path: Path) -> None:
    key = tmp_path / "k.key"
    Wallet.create().save(key)
    for command in (["settle"], ["claim-onchain", "--epoch", "-1"], ["contracts", "deploy"]):
        done = _cli(*command, "--rpc", "http://127.0.0.1:1", "--key-file", str(key))
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert "cannot reach an EVM node at http://127.0.0.1:1" in " ".join(done.stderr.split())
    done = _cli("settle", "--rpc", "http://127.0.0.1:99999/v2/APIKEY", "--key-file", str(key))
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "port" in done.stderr and "APIKEY" not in done.stderr, done.stderr
    done = _cli("settle", "--rpc", "http://127.0.0.1:1", "--key-file", str(tmp_path / "missing.key"))
    assert done.returncode == 2 and "heurist wallet new" in done.stderr
    for command in (["settle", "--rpc", "http://127.0.0.1:1", "--key-file", str(key)], ["contracts", "check"]):
        bare = subprocess.run([sys.executable, "-c", "import sys; sys.modules['web3'] = sys.modules['vyper'] = None; "
                               "from heurist.cli.main import main; main()", *command],  # without the `chain` extra
                              capture_output=True, text=True, timeout=120)
        assert bare.returncode == 2 and "Traceback" not in bare.stderr, bare.stderr
        assert "pip install -e '.[chain]'" in " ".join(bare.stderr.split()), bare.stderr
    checked = _cli("contracts", "check", "--json")
    assert checked.returncode == 0 and json.loads(checked.stdout.splitlines()[-1])["ok"] is True
