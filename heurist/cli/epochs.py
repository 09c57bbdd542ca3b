"""``heurist epoch close|report``, ``heurist proof`` and ``heurist tge``: the economy's settlement commands.

``epoch close`` with no epoch closes every ended epoch still open, oldest first (a network idle for a week
closes 168 one-hour epochs in one go, with a progress bar); with one, exactly that epoch (which must be
next). Closing is idempotent: a closed epoch prints its stored report.
"""

from __future__ import annotations

from typing import Any

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from heurist.cli.common import console, err_console, print_json
from heurist.cli.economy import JSON, epoch_app, open_economy
from heurist.economy.amounts import format_hue
from heurist.economy.book import EconomyError


@epoch_app.command("close")
def close(epoch: int | None = typer.Argument(None, help="The epoch to close (default: every ended, open one)."),
          json_out: bool = JSON) -> None:
    """Close epochs: pay rewards as compounded esHUE stake, settle fees, store the Merkle root of the payouts."""
    from heurist.economy.epochs import close_ended, close_epoch

    economy, _ = open_economy()
    if epoch is not None:
        reports = [close_epoch(economy, epoch)]
    else:
        with Progress(console=err_console, transient=True) as progress:
            task = progress.add_task("closing epochs", total=None)

            def step(n: int, final: int) -> None:
                progress.update(task, description=f"closed epoch {n} of {final}", advance=1)

            reports = close_ended(economy, step)
    if json_out:
        print_json(reports[-1] if epoch is not None else reports)
        return
    if not reports:
        console.print("no epoch has ended since the last close")
    for report in reports:
        show_report(report)


@epoch_app.command("report")
def report(epoch: int = typer.Argument(..., help="A closed epoch."), json_out: bool = JSON) -> None:
    """A closed epoch's report: issued, burned, the next base fee, per-node and per-staker rewards, the root."""
    from heurist.economy.epochs import epoch_report

    economy, _ = open_economy()
    found = epoch_report(economy, epoch)
    if found is None:
        raise EconomyError(f"epoch: {epoch} is not closed (`heurist epoch close`)")
    if json_out:
        print_json(found)
    else:
        show_report(found)


def proof(address: str = typer.Argument(..., help="The address paid."),
          epoch: int = typer.Option(..., "--epoch", help="The epoch (-1: the TGE conversion)."),
          json_out: bool = JSON) -> None:
    """The Merkle proof of an address's payout: {address, amount, proof, root}, as MerkleProof.verify takes it."""
    from heurist.economy.epochs import proof as make_proof

    economy, _ = open_economy()
    found = make_proof(economy, address, epoch)
    if json_out:
        print_json({k: found[k] for k in ("address", "amount", "proof", "root")})
        return
    console.print(f"{found['address']} was paid {format_hue(int(found['amount']))} in epoch {epoch}")
    console.print(f"root  {found['root']}")
    for step in found["proof"]:
        console.print(f"proof {step}")


def tge(json_out: bool = JSON) -> None:
    """Convert testnet points into 50,000,000 HUE (Waifu and Llama pools, pro rata by points). Runs once."""
    from heurist.economy.tge import run_tge

    economy, _ = open_economy()
    result = run_tge(economy)
    if json_out:
        print_json(result)
        return
    table = Table("address", "HUE", "from Waifu points", "from Llama points", title="TGE")
    for row in result["payouts"]:
        table.add_row(row["address"], format_hue(int(row["amount"])), format_hue(int(row["waifu"])),
                      format_hue(int(row["llama"])))
    console.print(table)
    console.print(f"minted {format_hue(int(result['minted']))} HUE; {format_hue(int(result['unminted']))} HUE "
                  f"stays in the emission budget; Merkle root {result['merkle_root']}")


def show_report(report: dict[str, Any], out: Console = console) -> None:
    nodes = Table("node", "points", "uptime slots", "avg stake", "active", "bribe", "reward", "to stakers",
                  title=f"epoch {report['epoch']} ({report['start']} - {report['end']})")
    for n in report["nodes"]:
        nodes.add_row(n["node"], f"{n['points']:.6f}", str(n["uptime_slots"]), format_hue(int(n["stake"])),
                      "yes" if n["active"] else "[red]no[/]", f"{n['bribe_bps'] / 100:g} %",
                      format_hue(int(n["reward"])), format_hue(int(n["to_stakers"])))
    out.print(nodes)
    issued, burned = int(report["issued"]), int(report["burned"])
    out.print(f"issued {format_hue(issued)} HUE, burned {format_hue(burned)} HUE"
                  f"{' ([bold]deflationary[/])' if report['deflationary'] else ''}; base fee "
                  f"{format_hue(int(report['base_fee']))} -> {format_hue(int(report['next_base_fee']))} HUE per unit "
                  f"({report['units']:g} units bought); Merkle root {report['merkle_root']}")


def register(root: typer.Typer) -> None:
    root.command("proof")(proof)
    root.command("tge")(tge)
