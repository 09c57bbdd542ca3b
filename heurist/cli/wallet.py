"""``heurist wallet``: create and inspect miner keys."""

from __future__ import annotations

from pathlib import Path

import typer

from heurist.cli.common import console
from heurist.errors import ConfigError
from heurist.identity import Wallet

app = typer.Typer(
    help="Miner keys: a miner's identity is its EVM address.", no_args_is_help=True,
    rich_markup_mode="markdown",
)


@app.command("new")
def new(out: Path = typer.Option(Path(".heurist/miner.key"), "--out", "-o",
                                 help="Where to write the key (mode 0600). Refuses to overwrite.")) -> None:
    """Create a new miner key file and print its address."""
    wallet = Wallet.create()
    try:
        wallet.save(out)
    except FileExistsError:
        raise ConfigError(f"{out} already exists; pass another --out or remove it first") from None
    console.print(f"address {wallet.address}\nkey written to {out} (keep it secret; back it up)")


@app.command("address")
def address(key_file: Path = typer.Option(..., "--key-file", help="The miner key file.")) -> None:
    """Print the address of a key file."""
    console.print(Wallet.from_file(key_file).address)


@app.command("addresses")
def addresses(
    key_file: Path = typer.Option(..., "--key-file", help="The operator's miner key file."),
    gpus: int = typer.Option(1, "--gpus", min=1, max=1024, help="How many GPU workers to list (GPU 0 .. N-1)."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """The address of each GPU worker of a multi-GPU box, derived from one key file.

    `heurist miner` on a box with several GPUs runs one worker per GPU, each its own miner in the ledger
    (its own device, points and audits) with a key derived from this one; GPU 0's is the key's own
    address, so a one-GPU box keeps its address. Register (stake, `heurist broker add-miner`) each one.
    """
    from rich.table import Table

    from heurist.cli.common import print_json

    wallet = Wallet.from_file(key_file)
    rows = [(index, wallet.derive(index).address) for index in range(gpus)]
    if json_out:
        print_json([{"gpu": index, "address": address} for index, address in rows])
        return
    table = Table("gpu", "address")
    for index, address in rows:
        table.add_row(str(index), address)
    console.print(table)
