"""``heurist keys``: API keys and their credits (Standard Credit Units) in the ledger database."""

from __future__ import annotations

import datetime as dt

import typer
from rich.table import Table

from heurist.cli.common import console, err_console, print_json, settings_with
from heurist.credits.ledger import CreditLedger
from heurist.points import from_micro

app = typer.Typer(
    help="API keys: create, list and top up their credits.", no_args_is_help=True,
    rich_markup_mode="markdown",
)


def _ledger() -> CreditLedger:
    """The credit ledger of HEURIST_DATABASE_URL, migrated on open like every ledger process does."""
    from heurist.db import open_engine

    return CreditLedger(open_engine(settings_with()))


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


@app.command("create")
def create(
    name: str = typer.Argument(..., help="Who or what the key is for."),
    units: float = typer.Option(0.0, "--units", min=0, help="Initial credits in Standard Credit Units."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
) -> None:
    """Create a key. Its plaintext is printed this once: only a hash is stored."""
    ledger = _ledger()
    key_id, plaintext = ledger.create_key(name, units)
    err_console.print("[bold yellow]store this key now:[/] it is shown once and cannot be recovered")
    if json_out:
        print_json({"id": key_id, "name": name, "key": plaintext, "balance": ledger.balance(key_id)})
        return
    console.print(f"key {key_id} ({name}), {ledger.balance(key_id):.6f} units:")
    print(plaintext, flush=True)


@app.command("list")
def list_keys(json_out: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """Every key: id, name, prefix, balance, created, disabled. Never the key itself."""
    rows = [{"id": k.id, "name": k.name, "prefix": k.prefix, "balance": from_micro(k.balance_micro),
             "created": _when(k.created_at), "disabled": k.disabled} for k in _ledger().list_keys()]
    if json_out:
        print_json(rows)
        return
    table = Table("id", "name", "prefix", "balance", "created", "disabled")
    for r in rows:
        table.add_row(str(r["id"]), str(r["name"]), f"{r['prefix']}…", f"{r['balance']:.6f}", str(r["created"]),
                      "yes" if r["disabled"] else "no")
    console.print(table)


@app.command("topup")
def topup(
    key_id: int = typer.Argument(..., help="The key's id (see `heurist keys list`)."),
    units: float = typer.Argument(..., help="Standard Credit Units to add."),
    note: str = typer.Option("", "--note", help="Why (kept in the credit history)."),
) -> None:
    """Add credits to a key."""
    balance = _ledger().topup(key_id, units, note)
    console.print(f"key {key_id}: {balance:.6f} units")
