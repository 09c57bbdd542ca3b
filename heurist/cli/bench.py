"""``heurist bench``: benchmarks that print side-by-side ratios."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from heurist.catalog import load_catalog
from heurist.cli.common import console, err_console, print_json, settings_with
from heurist.identity import Wallet

app = typer.Typer(help="Benchmarks: ratios measured side by side in one run.", no_args_is_help=True)
worker_app = typer.Typer(help="Workers started by the benchmarks (not for direct use).", hidden=True)
app.add_typer(worker_app, name="worker")


@app.command("path")
def path(
    jobs: int = typer.Option(300, "--jobs", min=10, help="Jobs per side (after a warm-up of 5)."),
    size: int = typer.Option(2048, "--size", min=200, help="Output bytes per job."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Full job path vs a bare Celery task doing one presigned PUT, on the configured broker and database.

    Set HEURIST_BROKER_URL / HEURIST_DATABASE_URL to measure on RabbitMQ and PostgreSQL; storage is a
    SeaweedFS started for the run unless HEURIST_S3_ENDPOINT is set.
    """
    from heurist.bench.path import as_dict, run_path_bench

    result = run_path_bench(settings_with(), jobs, size, err_console)
    if json_out:
        print_json(as_dict(result))
        return
    table = Table("side", "jobs/s", title=f"{result.jobs} jobs, {result.broker} broker, {result.database} ledger")
    table.add_row("bare Celery task + presigned PUT", f"{result.baseline_per_s:.1f}")
    table.add_row("full job path (submit → miner → S3 → ledger)", f"{result.full_path_per_s:.1f}")
    console.print(table)
    console.print(f"ratio full / baseline: [bold]{result.ratio:.3f}[/]")


@worker_app.command("miner")
def bench_miner(key_file: Path = typer.Option(..., "--key-file"), size: int = typer.Option(2048, "--size")) -> None:
    """The null-model miner of `bench path`."""
    from workers.bench import run_null_miner

    settings = settings_with()
    run_null_miner(settings, load_catalog(settings.catalog_path), Wallet.from_file(key_file), size, err_console)


@worker_app.command("put")
def bench_put() -> None:
    """The baseline worker of `bench path`: one presigned PUT per task."""
    from workers.bench import run_put_worker

    run_put_worker(settings_with())
