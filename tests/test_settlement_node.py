"""Settlement end to end over HTTP: the real `heurist` commands against a ganache node (tests/fixtures/evm_node.py).

The book is a SQLite economy built in-process the way the ledger leaves it: testnet points converted at TGE (epoch
-1, paid in HUE), then genesis, a miner staking on itself with a 20 % bribe, a staker delegating to it, an app
buying credits (its base fee burned), the miner's points and uptime in epoch E, and every ended epoch closed. E-1
pays nobody (no points), so it has no root. Then, as subprocesses with only HEURIST_DATABASE_URL and a .env:
`contracts deploy`, `settle` (twice: the second posts nothing), `claim-onchain` for the miner (from the database,
epoch E and the TGE) and for the staker (from a `heurist proof --json` file, with no database at all), and the
balances read back on chain with web3 match the epoch report to the base unit. Plus the refusals that name the fix:
an unreachable RPC, a node serving another chain, an epoch not closed, an epoch already posted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from web3 import Web3

from heurist.catalog import JobKind
from heurist.credits.ledger import CreditLedger
from heurist.db import migrate
from heurist.db.engine import make_engine
from heurist.economy.actions import FundKey, SetBribe, Stake
from heurist.economy.amounts import hue
from heurist.economy.config import Rules
from heurist.economy.epochs import close_ended, epoch_report
from heurist.economy.merkle import MerkleTree
from heurist.economy.service import Economy
from heurist.economy.tge import run_tge
from heurist.identity import Wallet
from heurist.settlement.artifacts import load
from heurist.settlement.chain import SettlementError, connect, transact
from heurist.settlement.deploy import deploy
from heurist.storage.seaweed import free_ports
from tests.fixtures.economy import add_work
from tests.fixtures.evm_node import ROOT, EvmNode, RpcGateway
from tests.test_economy_tge import _points

HOUR = 3600
CLI_ENV = {"HEURIST_EPOCH_S": str(HOUR), "HEURIST_HEARTBEAT_INTERVAL_S": "30",  # 120 slots an epoch, as the book's
           "PYTHONPATH": str(ROOT)}  # the subprocess runs this checkout's heurist, whatever cwd it is given


@dataclass
class Book:
    """The economy database and what the test compares the chain with."""

    url: str
    dir: Path
    epoch: int  # E, the epoch with payouts
    report: dict[str, Any]
    tge: dict[str, int]  # the TGE's leaves
    miner: Wallet
    staker: Wallet
    settler: Wallet


@pytest.fixture(scope="module")
def book(evm_node: EvmNode, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Book]:
    """See the module docstring. Epochs are real hours a few hours ago, so the CLI's clock agrees they ended."""
    folder = tmp_path_factory.mktemp("settle")
    url = f"sqlite:///{folder / 'economy.db'}"
    migrate.upgrade(url)
    engine = make_engine(url)
    settler, miner, staker, app = (evm_node.wallet(i) for i in range(4))  # funded: they pay their own gas
    for name, wallet in (("settler", settler), ("miner", miner), ("staker", staker)):
        wallet.save(folder / f"{name}.key")
    epoch = int(time.time()) // HOUR - 3
    clock = [(epoch - 1) * HOUR + 10.0]
    eco = Economy(engine, Rules(epoch_s=HOUR, slots_per_epoch=120, close_grace_s=0), clock=lambda: clock[0])
    # the miner's testnet image points (the Waifu pool; its miners row too), before the book's first epoch: what
    # TGE converts
    _points(engine, miner.address, JobKind.IMAGE, 5_000_000, "tge-job", at=(epoch - 2) * HOUR)
    eco.genesis({miner.address: hue(30_000), staker.address: hue(20_000), app.address: hue(100)})
    sign, m = eco.domain.sign, miner.address
    eco.apply(sign(miner, Stake(account=m, node=m, token="HUE", amount=hue(10_000), nonce=0)))
    eco.apply(sign(staker, Stake(account=staker.address, node=m, token="HUE", amount=hue(15_000), nonce=0)))
    eco.apply(sign(miner, SetBribe(node=m, bps=2_000, nonce=1)))
    tge = {p["address"]: int(p["amount"]) for p in run_tge(eco)["payouts"]}
    clock[0] = epoch * HOUR + 60
    key_id, _ = CreditLedger(engine).create_key("app")
    eco.apply(sign(app, FundKey(account=app.address, key_id=key_id, amount=hue(10), nonce=0)))
    add_work(engine, m, 3_000_000, 120, epoch, at_ms=(epoch * HOUR + 120) * 1000)
    clock[0] = (epoch + 1) * HOUR + 1
    assert [r["epoch"] for r in close_ended(eco)] == [epoch - 1, epoch]
    report = epoch_report(eco, epoch)
    assert report is not None and report["merkle_root"]
    engine.dispose()
    yield Book(url, folder, epoch, report, tge, miner, staker, settler)


def heurist(book: Book, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The real CLI in the book's folder (its .env is what `contracts deploy` wrote)."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("HEURIST_")}
    full.update({**CLI_ENV, "HEURIST_DATABASE_URL": book.url, **env})
    return subprocess.run([sys.executable, "-m", "heurist.cli.main", *args], cwd=book.dir, env=full,
                          capture_output=True, text=True, timeout=180)


def last_json(done: subprocess.CompletedProcess[str]) -> Any:
    assert done.returncode == 0, (done.stdout, done.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1])


def refused(done: subprocess.CompletedProcess[str], *phrases: str) -> str:
    assert done.returncode != 0, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    said = " ".join((done.stderr + done.stdout).split())
    for phrase in phrases:
        assert phrase in said, said
    return said


@pytest.fixture(scope="module")
def deployed(book: Book, evm_node: EvmNode) -> dict[str, Any]:
    done = last_json(heurist(book, "contracts", "deploy", "--rpc", evm_node.url, "--key-file",
                             str(book.dir / "settler.key"), "--json"))
    env = (book.dir / ".env").read_text()
    for name in ("HUE", "ESHUE", "DISTRIBUTOR"):
        assert f"HEURIST_SETTLEMENT_{name}={done[name.lower()]}" in env, env
    assert "HEURIST_SETTLEMENT_CHAIN_ID=1337" in env, env
    return done


def test_settle_claim_and_the_chain_matches_the_report(book: Book, evm_node: EvmNode,
                                                       deployed: dict[str, Any]) -> None:
    w3 = Web3(Web3.HTTPProvider(evm_node.url))
    hue_c = w3.eth.contract(address=deployed["hue"], abi=load("HUE").abi)
    eshue = w3.eth.contract(address=deployed["eshue"], abi=load("esHUE").abi)
    dist = w3.eth.contract(address=deployed["distributor"], abi=load("RewardsDistributor").abi)
    e, rpc = book.epoch, evm_node.url
    payouts = {p["address"]: int(p["amount"]) for p in book.report["payouts"]}
    assert set(payouts) == {book.miner.address, book.staker.address} and all(payouts.values())
    assert int(book.report["burned"]) > 0 and int(book.report["issued"]) > 0

    settled = last_json(heurist(book, "settle", "--rpc", rpc, "--key-file", str(book.dir / "settler.key"), "--json"))
    assert [p["epoch"] for p in settled["posted"]] == [-1, e], "oldest first, the TGE included"
    assert [s["epoch"] for s in settled["skipped"]] == [e - 1], "an epoch without payouts has no root"
    again = last_json(heurist(book, "settle", "--rpc", rpc, "--key-file", str(book.dir / "settler.key"), "--json"))
    assert again["posted"] == [] and again["already_on_chain"] == [-1, e]
    said = " ".join(heurist(book, "settle", "--rpc", rpc, "--key-file", str(book.dir / "settler.key")).stdout.split())
    assert "nothing to post" in said, said

    assert "0x" + bytes(dist.functions.roots(e).call()).hex() == book.report["merkle_root"]
    assert dist.functions.totals(e).call() == sum(payouts.values())
    assert dist.functions.issued(e).call() == int(book.report["issued"])
    assert dist.functions.burned(e).call() == int(book.report["burned"])
    assert "0x" + bytes(dist.functions.roots(-1).call()).hex() == MerkleTree.of(list(book.tge.items())).root
    assert dist.functions.totals(-1).call() == sum(book.tge.values()) == dist.functions.issued(-1).call()

    miner_key = str(book.dir / "miner.key")
    got = last_json(heurist(book, "claim-onchain", "--rpc", rpc, "--key-file", miner_key, "--epoch", str(e), "--json"))
    assert (got["token"], int(got["amount"])) == ("esHUE", payouts[book.miner.address])
    got = last_json(heurist(book, "claim-onchain", "--rpc", rpc, "--key-file", miner_key, "--epoch", "-1", "--json"))
    assert (got["token"], int(got["amount"])) == ("HUE", book.tge[book.miner.address])

    proof = heurist(book, "proof", book.staker.address, "--epoch", str(e), "--json")
    assert proof.returncode == 0, proof.stderr
    (book.dir / "staker-proof.json").write_text(proof.stdout)
    no_db = f"sqlite:///{book.dir / 'absent' / 'none.db'}"  # any use of a database would fail: the file is enough
    got = last_json(heurist(book, "claim-onchain", "--rpc", rpc, "--key-file", str(book.dir / "staker.key"),
                            "--epoch", str(e), "--proof", str(book.dir / "staker-proof.json"), "--json",
                            HEURIST_DATABASE_URL=no_db))
    assert int(got["amount"]) == payouts[book.staker.address]

    assert eshue.functions.balanceOf(book.miner.address).call() == payouts[book.miner.address]
    assert eshue.functions.balanceOf(book.staker.address).call() == payouts[book.staker.address]
    assert hue_c.functions.balanceOf(book.miner.address).call() == book.tge[book.miner.address]
    assert hue_c.functions.balanceOf(book.staker.address).call() == 0
    assert dist.functions.claimedTotal(e).call() == dist.functions.totals(e).call()
    assert eshue.functions.totalSupply().call() == sum(payouts.values())
    assert hue_c.functions.balanceOf(deployed["eshue"]).call() == sum(payouts.values()), "esHUE is fully backed"
    assert hue_c.functions.totalSupply().call() == sum(payouts.values()) + sum(book.tge.values())

    refused(heurist(book, "claim-onchain", "--rpc", rpc, "--key-file", miner_key, "--epoch", str(e)),
            "already claimed", "nothing was sent")


def test_settle_refuses_an_epoch_not_closed_or_already_posted(book: Book, evm_node: EvmNode,
                                                              deployed: dict[str, Any]) -> None:
    key = str(book.dir / "settler.key")
    nxt = book.epoch + 1
    refused(heurist(book, "settle", "--rpc", evm_node.url, "--key-file", key, "--epoch", str(nxt)),
            f"epoch {nxt} is not closed", f"heurist epoch close {nxt}")
    last_json(heurist(book, "settle", "--rpc", evm_node.url, "--key-file", key, "--json"))  # posted if not yet
    refused(heurist(book, "settle", "--rpc", evm_node.url, "--key-file", key, "--epoch", str(book.epoch)),
            "already posted", "block")


def test_unreachable_rpc_and_wrong_chain_id_name_the_fix(book: Book, evm_node: EvmNode,
                                                         deployed: dict[str, Any]) -> None:
    key = str(book.dir / "settler.key")
    nowhere = f"http://127.0.0.1:{free_ports(1)[0]}"
    for args in (("settle",), ("claim-onchain", "--epoch", str(book.epoch)), ("contracts", "deploy")):
        refused(heurist(book, *args, "--rpc", nowhere, "--key-file", key), "cannot reach", nowhere, "check the URL")
    said = refused(heurist(book, "settle", "--rpc", evm_node.url, "--key-file", key,
                           HEURIST_SETTLEMENT_CHAIN_ID="324"), "chain id 1337", "HEURIST_SETTLEMENT_CHAIN_ID is 324")
    assert "posted" not in said


def test_a_hosted_endpoints_http_errors_name_no_key_and_a_lost_answer_names_the_sent_transaction(
        evm_node: EvmNode) -> None:
    """Behind a hosted endpoint's HTTP front (its API key in the URL's path): a rate-limited gas estimate, and a
    transaction the node received whose answer the front lost (HTTP 502). Neither error may print the key, and
    the second must not say the node refused a transaction that is in fact on chain: it names its hash."""
    settler = evm_node.wallet(5)
    direct = Web3(Web3.HTTPProvider(evm_node.url))
    with RpcGateway(evm_node.url) as gateway:
        w3 = connect(gateway.url + "/v2/APIKEY", 1337)
        dist = w3.eth.contract(address=deploy(w3, settler).distributor, abi=load("RewardsDistributor").abi)
        root = b"\x42" * 32

        gateway.fail = {"eth_estimateGas": (429, False)}
        with pytest.raises(SettlementError) as limited:
            transact(w3, settler, dist.functions.post(3, root, 1, 1, 0), what="post")
        assert "APIKEY" not in str(limited.value) and "429" in str(limited.value), str(limited.value)
        assert bytes(dist.functions.roots(3).call()) == b"\0" * 32

        gateway.fail = {"eth_sendRawTransaction": (502, True)}
        with pytest.raises(SettlementError) as lost:
            transact(w3, settler, dist.functions.post(3, root, 1, 1, 0), what="post")
    said, on_node = str(lost.value), direct.eth.contract(address=dist.address, abi=dist.abi)
    assert "APIKEY" not in said and "refused" not in said, said
    assert bytes(on_node.functions.roots(3).call()) == root, "the node got the transaction and mined it"
    posted = on_node.events.RootPosted.get_logs(from_block=0)
    assert len(posted) == 1 and "0x" + bytes(posted[0]["transactionHash"]).hex() in said, said
    assert "may have been sent" in said and "before running again" in said, said


def test_a_deploy_whose_env_file_cannot_be_written_still_names_the_deployed_addresses(book: Book,
                                                                                     evm_node: EvmNode) -> None:
    """The contracts are on chain (seven transactions paid) before the env file is written: if writing fails, the
    error must give the addresses, or they are lost to whoever ran it."""
    key = book.dir / "deployer.key"
    evm_node.wallet(6).save(key)
    (book.dir / "a-file").write_text("not a directory\n")
    said = refused(heurist(book, "contracts", "deploy", "--rpc", evm_node.url, "--key-file", str(key),
                           "--env-file", str(book.dir / "a-file" / ".env")), "cannot write it")
    w3 = Web3(Web3.HTTPProvider(evm_node.url))
    for name in ("HUE", "ESHUE", "DISTRIBUTOR"):
        found = said.split(f"HEURIST_SETTLEMENT_{name}=", 1)
        assert len(found) == 2, said
        assert w3.eth.get_code(Web3.to_checksum_address(found[1][:42])), f"{name}: no contract at {found[1][:42]}"
    assert "HEURIST_SETTLEMENT_CHAIN_ID=1337" in said, said
