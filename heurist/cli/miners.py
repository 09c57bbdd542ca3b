"""`heurist miners`: who is on the network, what they serve, and whether they are up."""

from __future__ import annotations

import time

import typer
from rich.table import Table

from heurist.catalog import load_catalog
from heurist.cli.common import console, print_json, redacted, settings_with
from heurist.ledger.roster import MinerStatus, Presence

PRESENCE_STYLE = {Presence.ONLINE: "green", Presence.OFFLINE: "yellow", Presence.BANNED: "red"}


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def _table(rows: list[MinerStatus], now: float) -> Table:
    table = Table("miner", "status", "tier", "models", "device", "uptime (epoch)", "last epoch", "last seen",
                  "reputation", "points")
    for r in rows:
        table.add_row(r.address, f"[{PRESENCE_STYLE[r.presence]}]{r.presence.value}[/]", r.tier or "-",
                      ", ".join(r.models), r.device, f"{r.uptime:.0%}", f"{r.uptime_last_epoch:.0%}",
                      _ago(now - r.last_seen), f"{r.reputation:.2f}", f"{r.points:.4f}")
    return table


def miners(json_out: bool = typer.Option(False, "--json", help="Print one JSON list instead of a table.")) -> None:
    """List miners with tier, models, uptime, last heartbeat and reputation.

    Online: heard within HEURIST_OFFLINE_AFTER_MISSED heartbeat intervals. Uptime: the share of this
    epoch's heartbeat slots (HEURIST_EPOCH_S / HEURIST_HEARTBEAT_INTERVAL_S) the miner was heard in, so far;
    "last epoch" is the same for the whole previous epoch, the factor its rewards are multiplied by.
    """
    from heurist.ledger.factory import open_reader, open_uptime
    from heurist.ledger.roster import Roster

    settings = settings_with()
    catalog = load_catalog(settings.catalog_path)
    reader = open_reader(settings)
    roster = Roster(reader.engine, catalog, open_uptime(settings, reader), settings.offline_after_s())
    rows = roster.statuses()
    if json_out:
        print_json([row.as_json() for row in rows])
        return
    if not rows:
        console.print(f"no miners yet in {redacted(settings.resolved_database_url())} "
                      "(choose the ledger with HEURIST_DATABASE_URL)")
        return
    console.print(_table(rows, time.time()))
