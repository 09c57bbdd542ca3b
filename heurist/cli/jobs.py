"""`heurist jobs`: the newest jobs as the ledger records them, with how often the stranded-job sweep re-sent them.

Operators look here when a tier's queue emptied without its jobs completing (a purge, a broker loss): a job
the sweep re-sent shows its count, and one that ran out of re-sends shows FAILED with the reason.
"""

from __future__ import annotations

import time

import typer
from rich.table import Table

from heurist.cli.common import console, print_json, settings_with
from heurist.jobs import JobState


def jobs(
    state: JobState | None = typer.Option(None, "--state", help="Only jobs in this state."),
    resent: bool = typer.Option(False, "--resent", help="Only jobs the stranded-job sweep sent again."),
    limit: int = typer.Option(20, "--limit", min=1, max=10_000, help="How many, newest first."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """The newest jobs: state, miner, points, re-sends and why a job failed."""
    from heurist.ledger.factory import open_reader

    views = open_reader(settings_with()).recent_jobs(limit, state=state, resent=resent)
    if json_out:
        print_json([{"job_id": v.job_id, "model": v.model_id, "state": v.state.value, "miner": v.miner,
                     "points": v.points, "resends": v.resends, "created_at": v.created_at,
                     "deadline_at": v.deadline_at, "finished_at": v.finished_at, "error": v.error} for v in views])
        return
    now = time.time()
    table = Table("job", "model", "state", "re-sent", "deadline", "points", "error")
    for v in views:
        due = "" if v.state.terminal else f"{v.deadline_at - now:+.0f}s"
        table.add_row(v.job_id, v.model_id, v.state.value, str(v.resends), due, f"{v.points:.6f}", v.error or "")
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("jobs")(jobs)
