"""``heurist settle``, ``heurist claim-onchain`` and ``heurist contracts deploy|check``: the economy on an EVM chain.

The order of a network's life: ``contracts deploy`` once (it writes the addresses and chain id to .env);
``epoch close`` off chain, then ``settle`` posts each closed epoch's root (run it after every close, or from cron:
it posts only what is missing); each miner and staker then ``claim-onchain`` with the proof of ``heurist proof``.
Every command takes the node's URL (``--rpc``: ganache locally, https://mainnet.era.zksync.io for zkSync Era) and
a heurist key file that signs and pays the gas; gas, fees and the chain id come from that node. web3 and the
contracts are imported inside the commands: the rest of the CLI starts without them, and without the `chain`
extra these commands say how to install it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from heurist.cli.common import console, err_console, print_json, settings_with
from heurist.cli.economy import JSON
from heurist.economy.amounts import format_hue
from heurist.errors import ConfigError

if TYPE_CHECKING:
    from web3 import Web3

    from heurist.identity import Wallet

contracts_app = typer.Typer(help="The HUE, esHUE and RewardsDistributor contracts: deploy them, check their "
                            "compiled artifacts.", no_args_is_help=True, rich_markup_mode="markdown")

RPC = typer.Option(..., "--rpc", help="The chain's JSON-RPC URL, http(s): http://127.0.0.1:8545 (ganache), "
                   "https://mainnet.era.zksync.io (zkSync Era, chain 324), https://sepolia.era.zksync.dev (its "
                   "testnet, 300). Gas, fees and the chain id are read from it.")
KEY_FILE = typer.Option(..., "--key-file", help="A heurist key file (`heurist wallet new`) that signs and pays "
                        "the gas; it needs the chain's native coin (ETH on zkSync Era).")
DISTRIBUTOR = typer.Option(None, "--distributor", help="The RewardsDistributor's address (default: "
                           "HEURIST_SETTLEMENT_DISTRIBUTOR, which `heurist contracts deploy` records).")


CHAIN_EXTRA = "pip install -e '.[chain]'"


def _needs(module: str) -> None:
    """ConfigError naming the install command if ``module`` (web3, vyper: the `chain` extra) is not installed."""
    import importlib

    try:
        importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"this command needs {module}, part of heurist's `chain` extra: install it with "
                          f"`{CHAIN_EXTRA}` in the repository (web3==8.0.0, vyper==0.4.3)") from None


def _chain(rpc: str, key_file: Path, check_chain_id: bool = True) -> tuple[Web3, Wallet, Any]:
    """The connected chain (its id checked against HEURIST_SETTLEMENT_CHAIN_ID), the key, and the settings."""
    from heurist.identity import Wallet
    from heurist.settlement.chain import connect

    settings = settings_with()
    wallet = Wallet.from_file(key_file)
    w3 = connect(rpc, settings.settlement_chain_id if check_chain_id else None)
    return w3, wallet, settings


def _distributor(w3: Web3, address: str | None, settings: Any) -> Any:
    from heurist.settlement.chain import contract

    given = address or settings.settlement_distributor
    return contract(w3, "RewardsDistributor", given,
                    "--distributor" if address else "HEURIST_SETTLEMENT_DISTRIBUTOR")


def settle(rpc: str = RPC, key_file: Path = KEY_FILE,
           epoch: int | None = typer.Option(None, "--epoch", help="Post only this epoch (-1: the TGE); an error "
                                            "if it is not closed or already on chain."),
           distributor: str | None = DISTRIBUTOR, json_out: bool = JSON) -> None:
    """Post the Merkle root of every closed epoch that is not on chain yet, oldest first, with its total, issued
    and burned. Idempotent: a second run posts nothing and says so. The key must be the distributor's settlement
    key. Stops before sending anything if the chain holds a different root for an epoch than the book."""
    _needs("web3")
    from heurist.cli.economy import open_economy
    from heurist.settlement.settle import settle as post_roots

    w3, wallet, settings = _chain(rpc, key_file)
    contract = _distributor(w3, distributor, settings)
    economy, _ = open_economy()
    result = post_roots(economy, w3, wallet, contract, epoch)
    if json_out:
        print_json({"chain_id": int(w3.eth.chain_id), "distributor": contract.address, **result.as_dict()})
        return
    if result.posted:
        console.print(f"posted to {contract.address} (chain {w3.eth.chain_id}):")
        for p in result.posted:  # a line per hash: a table would cut 66-digit hashes in a narrow terminal
            console.print(f"[bold]epoch {p.epoch}[/]: total {format_hue(p.total)} HUE, issued "
                          f"{format_hue(p.issued)} HUE, burned {format_hue(p.burned)} HUE\n  root {p.root}\n"
                          f"  tx   {p.tx} (block {p.block})", soft_wrap=True)
    else:
        console.print("nothing to post: every closed epoch's root is already on chain")
    if result.on_chain:
        console.print(f"already on chain: {_epochs(result.on_chain)}")
    for skipped, why in result.skipped:
        console.print(f"skipped epoch {skipped}: {why}")


def claim_onchain(rpc: str = RPC, key_file: Path = KEY_FILE,
                  epoch: int = typer.Option(..., "--epoch", help="The epoch whose payout to claim (-1: the TGE, "
                                            "paid in HUE; others pay esHUE)."),
                  address: str | None = typer.Option(None, "--address", help="The address paid (default: the key "
                                                     "file's). Anyone may send a claim; it always pays this address."),
                  proof: Path | None = typer.Option(None, "--proof", help="A file holding the JSON of `heurist "
                                                    "proof ADDRESS --epoch N --json`, for a claimer without access "
                                                    "to the economy database (default: read it from "
                                                    "HEURIST_DATABASE_URL)."),
                  distributor: str | None = DISTRIBUTOR, json_out: bool = JSON) -> None:
    """Claim an address's payout of one epoch with its Merkle proof. The proof is checked against the root on
    chain, and the claim against what is already claimed, BEFORE anything is sent: a bad proof or a second claim
    costs no gas."""
    _needs("web3")
    from heurist.settlement.claim import claim, leaf_from_book, leaf_from_file

    w3, wallet, settings = _chain(rpc, key_file)
    contract = _distributor(w3, distributor, settings)
    if proof is not None:
        leaf = leaf_from_file(proof, epoch, address)
    else:
        from heurist.cli.economy import open_economy

        leaf = leaf_from_book(open_economy()[0], address or wallet.address, epoch)
    done = claim(w3, wallet, contract, leaf)
    if json_out:
        print_json({"chain_id": int(w3.eth.chain_id), "distributor": contract.address, **done.as_dict()})
        return
    console.print(f"claimed {format_hue(done.amount)} {done.token} for {done.address} (epoch {done.epoch}) in tx "
                  f"{done.tx}, block {done.block}; it now holds {format_hue(done.balance)} {done.token}")


@contracts_app.command("deploy")
def deploy(rpc: str = RPC, key_file: Path = KEY_FILE,
           settler: str | None = typer.Option(None, "--settler", help="The settlement key's address, the only one "
                                              "that may post roots (default: the deploying key's)."),
           env_file: Path = typer.Option(Path(".env"), "--env-file", help="Where to record HEURIST_SETTLEMENT_HUE, "
                                         "_ESHUE, _DISTRIBUTOR and _CHAIN_ID (its other lines are kept); Settings "
                                         "reads ./.env."),
           json_out: bool = JSON) -> None:
    """Deploy HUE, esHUE and the RewardsDistributor, let the distributor mint both and move esHUE, and record
    their addresses and the chain id in the env file. The deploying key owns the three contracts."""
    _needs("web3")
    from heurist.settlement.deploy import deploy as deploy_contracts
    from heurist.settlement.deploy import record

    w3, wallet, _ = _chain(rpc, key_file, check_chain_id=False)  # a deploy may target a new chain: it records it
    done = deploy_contracts(w3, wallet, settler)
    overridden = record(done.env(), env_file)
    if json_out:
        print_json({**done.as_dict(), "env_file": str(env_file), "overridden_by_environment": overridden})
    else:
        table = Table("contract", "address", title=f"deployed on chain {done.chain_id} (block {done.block}, "
                      f"{done.gas_used:,} gas)")
        for name, value in (("HUE", done.hue), ("esHUE", done.eshue), ("RewardsDistributor", done.distributor),
                            ("owner", done.owner), ("settler", done.settler)):
            table.add_row(name, value)
        console.print(table)
        console.print(f"recorded {', '.join(done.env())} in {env_file}")
    for name in overridden:
        err_console.print(f"[yellow]warning:[/] {name} is set in this shell's environment, which Settings prefers "
                          f"to {env_file}: unset it or set it to the new value")


@contracts_app.command("check")
def check(json_out: bool = JSON) -> None:
    """Recompile the Vyper sources in contracts/ (vyper 0.4.3, in-process) and check that the shipped artifacts in
    heurist/settlement/build match them: what you deploy is what the sources say."""
    _needs("vyper")
    from heurist.settlement.artifacts import CONTRACTS, REGENERATE, stale

    found = stale()
    if json_out:
        print_json({"contracts": list(CONTRACTS), "stale": found, "ok": not found})
    if found:
        raise ConfigError(f"contracts: the artifacts of {', '.join(found)} do not match their sources: run "
                          f"`{REGENERATE}` and commit heurist/settlement/build")
    if not json_out:
        console.print(f"the artifacts of {', '.join(CONTRACTS)} match their sources")


def _epochs(epochs: list[int]) -> str:
    return ", ".join(map(str, epochs)) if len(epochs) <= 8 else f"{len(epochs)} epochs, {epochs[0]} to {epochs[-1]}"


def register(root: typer.Typer) -> None:
    root.command("settle")(settle)
    root.command("claim-onchain")(claim_onchain)
    root.add_typer(contracts_app, name="contracts")
