"""``heurist audit``: what auditors ask of the points database."""

from __future__ import annotations

import typer
from rich.table import Table

from heurist.cli.common import console, print_json, settings_with

app = typer.Typer(
    help="Audit outcomes, flags, escrow and reputation per miner.", no_args_is_help=True,
    rich_markup_mode="markdown",
)


@app.command("report")
def report(
    miner: str | None = typer.Option(None, "--miner", help="One miner's address (default: all)."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Per miner: points (available, escrowed, clawed back), audits passed/failed, flagged, banned, reputation.

    The same figures are SQL views in the ledger database for your own queries: v_points_per_miner_epoch,
    v_audit_outcomes, v_flagged_miners.
    """
    from heurist.audit.report import audit_report
    from heurist.db import open_engine
    from heurist.ledger.audit_service import AuditLedger

    rows = audit_report(AuditLedger(open_engine(settings_with())), miner)
    if json_out:
        print_json([row.as_dict() for row in rows])
        return
    table = Table("miner", "points", "escrowed", "clawed back", "audits ok/failed", "flagged", "banned", "reputation")
    for r in rows:
        table.add_row(r.address, f"{r.points:.6f}", f"{r.escrowed:.6f}", f"{r.clawed_back:.6f}",
                      f"{r.audits_passed}/{r.audits_failed}", "yes" if r.flagged else "no",
                      "yes" if r.banned else "no", f"{r.reputation:.2f}")
    console.print(table)
