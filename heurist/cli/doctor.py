"""``heurist doctor``: can this machine mine, and what would it serve? Run it before ``heurist miner``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, SpinnerColumn, TextColumn, TransferSpeedColumn
from rich.table import Table

from heurist.catalog import load_catalog
from heurist.cli.common import console, err_console, print_json, redacted, settings_with, split_csv

if TYPE_CHECKING:
    from heurist.catalog.schema import ModelSpec
    from workers.miner.doctor import Hashing, Report
    from workers.miner.file_check import FileStatus, FileWork

STATE_STYLE = {"verified": "green", "missing": "yellow", "unpinned": "yellow", "corrupt": "red"}


def doctor(
    models: str | None = typer.Option(None, "--models", help="Comma-separated model ids to check (default: all)."),
    broker: str | None = typer.Option(None, "--broker", help="Broker URL to try (default: HEURIST_BROKER_URL)."),
    check_broker: bool = typer.Option(True, "--broker-check/--no-broker-check",
                                      help="Try to connect to an AMQP broker (3 s timeout)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
) -> None:
    """Check this machine for mining: devices (GPU name and VRAM, or CPU and RAM) and the tier each reaches,
    torch and CUDA, which catalog models fit, whether their files are present and match the catalog's
    sha256 (hashed, so large weights take a while), and whether the broker answers.

    Exits 1 when something a miner needs is wrong: corrupt model files, torch unable to use the GPUs, no
    model it could serve, or an unreachable broker.
    """
    from workers.miner import doctor as checks  # may import torch: only here, never at CLI start

    settings = settings_with(broker_url=broker)
    catalog = load_catalog(settings.catalog_path)
    wanted = split_csv(models) or list(catalog)
    for model_id in wanted:
        catalog[model_id]  # an unknown id fails here, with the catalog's own message
    devices, warnings = checks.check_devices()
    torch = checks.check_torch()
    with _hashing_progress(quiet=json_out) as hashing:
        rows = checks.check_models(catalog, wanted, devices, settings.resolved_models_dir(), hashing)
    url = settings.broker_url
    reached = checks.check_broker(url, redacted(url)) if (url and check_broker) else None
    report = checks.Report(devices=devices, torch=torch, models=rows, broker=reached, warnings=warnings)
    if json_out:
        print_json(report.to_json())
    else:
        _render(report, str(settings.resolved_models_dir()))
    if report.problems:
        raise typer.Exit(1)


@contextmanager
def _hashing_progress(quiet: bool) -> Iterator[Hashing]:
    """A byte-count progress bar (on stderr, gone when done) around hashing each model's files."""
    from workers.miner.file_check import check_files

    progress = Progress(SpinnerColumn(), TextColumn("hashing {task.description}"), BarColumn(), DownloadColumn(),
                        TransferSpeedColumn(), console=err_console, transient=True, disable=quiet)

    def hashing(spec: ModelSpec, work: FileWork) -> FileStatus:
        task = progress.add_task(spec.id, total=work.total_bytes())
        try:
            return check_files(spec, work, lambda n: progress.advance(task, n))
        finally:
            progress.remove_task(task)

    with progress:
        yield hashing


def _render(report: Report, models_dir: str) -> None:
    devices = Table("device", "name", "memory", "tier", "detail", title="devices")
    for d in report.devices:
        devices.add_row(d.label, d.name, f"{d.memory_gb:g} GB", d.tier or "[red]below vram8[/]", d.detail)
    console.print(devices)
    t = report.torch
    cuda = f"CUDA {t.cuda_version} available" if t.cuda_available else "no CUDA"
    console.print(f"torch {t.version}, {cuda}" if t.version else "[red]torch not installed[/]")
    table = Table("model", "tier", "fits", "files", "detail", title=f"catalog models (files in {models_dir})")
    for m in report.models:
        fits = ", ".join(m.fits_on) if m.fits_on else f"[yellow]no[/]: {m.why_not}"
        style = STATE_STYLE.get(m.files, "white")
        table.add_row(m.model, m.tier, fits, f"[{style}]{m.files}[/]", m.files_detail)
    console.print(table)
    if report.broker is not None:
        b = report.broker
        state = {True: "[green]reachable[/]", False: "[red]unreachable[/]", None: "not checked"}[b.reachable]
        console.print(f"broker {b.url}: {state} ({b.detail})")
    for warning in report.warnings:
        console.print(f"[yellow]warning:[/] {warning}")
    serving = [m.model for m in report.models if m.servable]
    if serving:
        console.print(f"a miner here would serve: [bold]{', '.join(serving)}[/]")
    for problem in report.problems:
        console.print(f"[bold red]problem:[/] {problem}")
