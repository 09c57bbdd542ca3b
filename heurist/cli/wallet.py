"""``heurist wallet``: create and inspect miner keys."""

from __future__ import annotations

from pathlib import Path

import typer

from heurist.cli.common import console
from heurist.errors import ConfigError
from heurist.identity import Wallet

app = typer.Typer(help="Miner keys: a miner's identity is its EVM address.", no_args_is_help=True)


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
