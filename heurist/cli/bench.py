"""``heurist bench``: benchmarks that print side-by-side ratios."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from heurist.catalog import Catalog, load_catalog
from heurist.cli.common import console, err_console, print_json, settings_with, split_csv
from heurist.identity import Wallet

if TYPE_CHECKING:
    from heurist.bench.models import ModelsBench

app = typer.Typer(
    help="Benchmarks: ratios measured side by side in one run.", no_args_is_help=True,
    rich_markup_mode="markdown",
)
worker_app = typer.Typer(
    help="Workers started by the benchmarks (not for direct use).", hidden=True,
    rich_markup_mode="markdown",
)
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


@app.command("latency")
def latency(
    jobs: int = typer.Option(200, "--jobs", min=1, help="Jobs per side, one at a time (after a warm-up of 5)."),
    size: int = typer.Option(2048, "--size", min=200, help="Output bytes per job."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """p50/p99 from submit to verified verdict of a null job, next to a bare Celery round trip, in one run.

    The bare side sends a task doing the same presigned PUT and waits for its link callback. Jobs run one at a
    time, the two sides alternating; the goal is a job p50 at most 2x the bare one. Set HEURIST_BROKER_URL /
    HEURIST_DATABASE_URL to measure on RabbitMQ and PostgreSQL (where verdicts are pushed, not polled); storage
    is a SeaweedFS started for the run unless HEURIST_S3_ENDPOINT is set.
    """
    from heurist.bench.latency import as_dict, run_latency_bench

    result = run_latency_bench(settings_with(), jobs, size, err_console)
    if json_out:
        print_json(as_dict(result))
        return
    verdicts = "pushed" if result.pushed_verdicts else "polled"
    table = Table("side", "p50 ms", "p99 ms", title=f"{result.jobs} jobs one at a time, {result.broker} broker, "
                  f"{result.database} ledger, verdicts {verdicts}")
    table.add_row("bare Celery task + PUT, to its link callback", f"{result.bare_p50_ms:.1f}",
                  f"{result.bare_p99_ms:.1f}")
    table.add_row("job: submit to verified verdict", f"{result.job_p50_ms:.1f}", f"{result.job_p99_ms:.1f}")
    console.print(table)
    console.print(f"ratio job / bare: p50 [bold]{result.ratio_p50:.2f}[/] (goal: 2 or less), p99 "
                  f"{result.ratio_p99:.2f}")


@app.command("load")
def load(
    jobs: int = typer.Option(3000, "--jobs", min=10, help="Null jobs to submit (they answer at once: the network "
                             "itself is what is loaded)."),
    miners: int = typer.Option(2, "--miners", min=1, max=16, help="Null miners, each on its own broker user."),
    ledgers: int = typer.Option(2, "--ledgers", min=1, max=8, help="Ledger processes consuming the one ledger queue."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Load test: jobs/s, p50/p99 submit-to-verdict latency, and whether every job ended exactly once.

    Runs on the configured broker and database: set HEURIST_BROKER_URL and HEURIST_DATABASE_URL for RabbitMQ and
    PostgreSQL (the embedded SQLite pair serialises both ledgers' writes). Storage is a SeaweedFS started for the
    run unless HEURIST_S3_ENDPOINT is set. Exits 1 if a job was lost or credited twice.
    """
    from heurist.bench.load import as_dict, run_load_bench

    result = run_load_bench(settings_with(), jobs, miners, ledgers, err_console)
    if json_out:
        print_json(as_dict(result))
    else:
        table = Table("measure", "value", title=f"{result.jobs} jobs, {result.miners} miners, {result.ledgers} "
                      f"ledgers, {result.broker} broker, {result.database} ledger")
        for name, value in as_dict(result).items():
            if name not in ("jobs", "miners", "ledgers", "broker", "database"):
                table.add_row(name.replace("_", " "), str(value))
        console.print(table)
    if not result.exactly_once:
        err_console.print(f"[red]not exactly once:[/] {result.not_completed} jobs not completed, "
                          f"{result.credited_twice} credited twice")
        raise typer.Exit(1)


@app.command("ledger")
def ledger(
    jobs: int = typer.Option(2000, "--jobs", min=20, help="Completions per run: the no-op baseline, 1 ledger, then 2 "
                             "ledger processes each drain this many pre-filled messages (fresh jobs each run)."),
    uploaded: bool = typer.Option(False, "--uploaded", help="Upload each output before its completion is sent (as "
                                  "for outputs over HEURIST_MINER_INLINE_BYTES); default: outputs inline in the "
                                  "completions, as miners send text answers."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Verified completions per second of 1 and 2 ledger processes, next to Celery's bare no-op task rate.

    Before each run the queues are pre-filled: N jobs recorded, N completions signed by registered miner keys
    (their small outputs inline, or PUT to storage first with --uploaded) and sent through the miners' own broker
    inboxes, as miners send them. Then
    the workers start and drain them: `heurist ledger` processes with their default settings, or a bare Celery
    worker (Celery's defaults, same pool and concurrency as one ledger) whose task does nothing. Rates are
    steady-state (10th to 90th percentile of the per-message start times).

    Prints ledger_1_per_s, ledger_2_per_s, noop_per_s, ratio_1_vs_noop (goal: 1.0 or more) and ratio_2_vs_1.
    Runs on the configured broker and database: set HEURIST_BROKER_URL and HEURIST_DATABASE_URL for RabbitMQ
    and PostgreSQL; storage is a SeaweedFS started for the run unless HEURIST_S3_ENDPOINT is set. Exits 1 if a
    job was not credited exactly once or a message was dead-lettered.
    """
    from heurist.bench.ledger import as_dict, run_ledger_bench

    result = run_ledger_bench(settings_with(), jobs, err_console, inline=not uploaded)
    if json_out:
        print_json(as_dict(result))
    else:
        table = Table("side", "per second", title=f"{result.jobs} completions, {result.broker} broker, "
                      f"{result.database} ledger, {result.pool} x{result.concurrency}")
        table.add_row("bare Celery no-op task", f"{result.noop_per_s:.1f}")
        table.add_row("1 ledger process (verified)", f"{result.ledger_1_per_s:.1f}")
        table.add_row("2 ledger processes (verified)", f"{result.ledger_2_per_s:.1f}")
        console.print(table)
        console.print(f"ratio 1 ledger / no-op: [bold]{result.ratio_1_vs_noop:.3f}[/]; "
                      f"2 ledgers / 1: [bold]{result.ratio_2_vs_1:.3f}[/]")
    if not result.exactly_once or result.dead_letters:
        err_console.print(f"[red]not exactly once or dead-lettered:[/] exactly_once={result.exactly_once}, "
                          f"dead_letters={result.dead_letters}")
        raise typer.Exit(1)


@app.command("epoch")
def epoch(
    sizes: str = typer.Option("1000,10000,100000", "--sizes", help="Comma-separated numbers of stake positions; "
                              "one fresh database and one timed close each."),
    database_url: str | None = typer.Option(
        None, "--database-url", help="PostgreSQL URL of a role allowed to CREATE DATABASE (e.g. "
        "postgresql://postgres@127.0.0.1:5432/postgres): each size runs in a new database created there and dropped "
        "after. Default: a SQLite file per size in a temporary directory."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Seconds to close one epoch over N stake positions, and their growth from 10,000 to 100,000 (10x is linear).

    Each size gets a fresh, migrated database with 100 miner nodes (points, uptime, a 10,000 HUE self-stake, a 20 %
    bribe) and N stake positions of distinct stakers, half HUE, half esHUE, posted in bulk as one book transaction
    (not timed). Only `close_epoch` is timed, wall clock: reading the inputs, splitting the rewards, posting the
    N + 100 payout legs and building the Merkle root. Nothing is read from or written to the configured database;
    a PostgreSQL database gets ANALYZE after the set-up, as autovacuum would.
    """
    from heurist.bench.epoch import as_dict, run_epoch_bench

    try:
        counts = sorted({int(part) for part in split_csv(sizes)})
    except ValueError:
        raise typer.BadParameter(f"{sizes!r}: give whole numbers like 1000,10000,100000",
                                 param_hint="--sizes") from None
    if not counts or counts[0] < 1:
        raise typer.BadParameter("give at least one size of 1 or more positions", param_hint="--sizes")
    bench = run_epoch_bench(counts, database_url, err_console)
    data = as_dict(bench)
    if json_out:
        print_json(data)
        return
    table = Table("positions", "seconds", "positions/s", "payouts", "merkle root",
                  title=f"epoch close, {bench.database}")
    for run in bench.runs:
        table.add_row(f"{run.positions:,}", f"{run.seconds:.3f}", f"{run.positions_per_s:,.0f}", f"{run.payouts:,}",
                      run.merkle_root[:18] + "…")
    console.print(table)
    if data["ratio_100k_10k"] is not None:
        console.print(f"growth 100k / 10k: [bold]{data['ratio_100k_10k']}[/] (10 is linear)")
    elif data["ratio"] is not None:
        console.print(f"growth {data['ratio_of']}: [bold]{data['ratio']}[/]")


MODELS_HELP = "Comma-separated model ids (default: every catalog model that fits this device and is on this machine)."
DEVICE_HELP = "cpu, cuda or cuda:N (default: cuda:0 if torch sees one, else cpu)."
THREADS_HELP = "torch threads (default: HEURIST_TORCH_THREADS, else all cores); part of a CPU benchmark's device name."
NOISY = 1.5  # slowest / fastest timed run above which a benchmark is flagged
REPEAT_HELP = "Timed runs per model after one warm-up; the median counts."


def _wanted(catalog: Catalog, models: str | None) -> list[str] | None:
    """The ids asked for (each must be in the catalog), or None for every model present."""
    ids = split_csv(models)
    for model_id in ids:
        catalog[model_id]  # raises UnknownModelError naming the known ids
    return ids or None


@app.command("models")
def models(
    models: str | None = typer.Option(None, "--models", help=MODELS_HELP),
    device: str | None = typer.Option(None, "--device", help=DEVICE_HELP),
    threads: int | None = typer.Option(None, "--threads", min=1, help=THREADS_HELP),
    repeat: int = typer.Option(3, "--repeat", min=1, help=REPEAT_HELP),
    output: Path | None = typer.Option(
        None, "--output", help="Catalog file to write (default: HEURIST_CATALOG_PATH, else `<data_dir>/catalog.toml`); "
        "an existing one is updated in place, a new one starts as a copy of the catalog in use."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Measure and print; write nothing."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Time each served model's reference job against its family reference and write the coefficients.

    The reference job is the model's catalog defaults (image size and steps, or
    default_max_tokens greedy), timed after one warm-up; the median counts.
    Seconds per unit follow the points formulas: image `w*h/512^2 * steps/20`,
    text (input + output tokens)/1000.

    coefficient = the model's seconds per unit / the family reference's (sd15
    for images, mixtral-8x7b for text: the catalog's units table), both timed
    in this run on this device. Without the reference on this machine the
    catalog's stated coefficient is kept and the entry says so; a CPU run never
    replaces a coefficient measured on CUDA.

    Each model keeps one benchmark entry per device (device, date, seconds per
    unit). The installed catalog is never written: serve the written copy with
    HEURIST_CATALOG_PATH.
    """
    from heurist.bench.models import as_dict, base_catalog, catalog_target
    from heurist.catalog.writer import apply_updates, check_writable, write_catalog

    settings = settings_with(torch_threads=threads)
    target = catalog_target(settings, output)
    _, catalog = base_catalog(settings, target)
    wanted = _wanted(catalog, models)
    if not dry_run:
        check_writable(target)  # before minutes of timing, not after
    from workers.bench.models import run_models_bench  # torch is imported only here

    run = run_models_bench(settings, catalog, wanted, device, repeat, err_console)
    _warn_if_noisy(run)
    text, _ = base_catalog(settings, target)  # re-read: the file may have changed during the run
    updated = apply_updates(text, [result.update() for result in run.results], str(target))
    if not dry_run:
        write_catalog(target, updated)
    if json_out:
        print_json(as_dict(run) | {"catalog": str(target.resolve()), "written": not dry_run})
        return
    _print_models(as_dict(run))
    where = target.resolve()
    if dry_run:
        console.print(f"dry run: nothing written (would update {where})")
    else:
        console.print(f"wrote {where}; serve it with [bold]HEURIST_CATALOG_PATH={where}[/]")


def _warn_if_noisy(run: ModelsBench) -> None:
    for timing in (result.timing for result in run.results):
        if timing.spread > NOISY:
            err_console.print(f"[yellow]warning:[/] {timing.model_id}'s timed runs differ {timing.spread:.1f}x: was "
                              "something else using the device? Rerun on a quiet machine before trusting them (on a "
                              "shared CPU, torch with every core is erratic: --threads 1 is steadier).")


def _print_models(data: dict[str, Any]) -> None:
    table = Table("model", "s / unit", "reference job", "family reference", "coefficient",
                  title=f"{data['device']}, {data['date']}, median of {data['repeat']}")
    for model_id, m in data["models"].items():
        ref_spu = m["family_reference_seconds_per_unit"]
        reference = m["family_reference"] + (f" ({ref_spu:.4g} s/unit)" if ref_spu else " (not here)")
        coefficient = (f"[bold]{m['coefficient']:g}[/] (was {m['previous_coefficient']:g})" if m["coefficient_measured"]
                       else f"{m['coefficient']:g} [yellow](kept)[/]")
        table.add_row(model_id, f"{m['seconds_per_unit']:.4g}", m["reference_job"], reference, coefficient)
    console.print(table)
    for model_id, m in data["models"].items():
        console.print(f"{model_id}: {m['note']}")


@app.command("audit")
def audit(
    models: str | None = typer.Option(None, "--models", help=MODELS_HELP),
    device: str | None = typer.Option(None, "--device", help=DEVICE_HELP),
    threads: int | None = typer.Option(None, "--threads", min=1, help=THREADS_HELP),
    repeat: int = typer.Option(3, "--repeat", min=1, help=REPEAT_HELP),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Audit cost next to generation cost, per model and per job kind (audit_cost_ratio).

    Each model's reference job is generated as a miner does, then checked as
    the auditor does, alternately in one run: an image is re-rendered and
    compared (so about 1x), a text answer is teacher-forced through the model
    once (about 0.1x). The ratio is median audit time / median generate time.
    """
    from workers.bench.audit import as_dict, run_audit_bench  # torch is imported only here

    settings = settings_with(torch_threads=threads)
    catalog = load_catalog(settings.catalog_path)
    bench = run_audit_bench(settings, catalog, _wanted(catalog, models), device, repeat, err_console)
    data = as_dict(bench)
    if json_out:
        print_json(data)
        return
    _print_audit(data)


def _print_audit(data: dict[str, Any]) -> None:
    table = Table("model", "kind", "generate s", "audit s", "audit / generate", "honest replay",
                  title=f"{data['device']}, median of {data['repeat']}")
    for model_id, m in data["models"].items():
        passed = "[green]passed[/]" if m["replay_passed"] else "[red]FAILED[/]"
        table.add_row(model_id, m["kind"], f"{m['generate_s']:.3f}", f"{m['audit_s']:.3f}",
                      f"{m['audit_cost_ratio']:.3f}", passed)
    console.print(table)
    ratios = ", ".join(f"{kind} {ratio:.3f}" for kind, ratio in data["audit_cost_ratio"].items() if ratio is not None)
    console.print(f"audit_cost_ratio: [bold]{ratios}[/]")


@app.command("batching")
def batching(
    jobs: int = typer.Option(8, "--jobs", min=1, max=64, help="Text jobs per side, each with its own prompt."),
    max_tokens: int = typer.Option(64, "--max-tokens", min=1, help="Tokens each job may generate (greedy)."),
    model: str = typer.Option("smollm2-135m", "--model", help="The text model to load (files on this machine)."),
    device: str | None = typer.Option(None, "--device", help=DEVICE_HELP),
    threads: int | None = typer.Option(None, "--threads", min=1, help=THREADS_HELP),
    repeat: int = typer.Option(3, "--repeat", min=1, help="Rounds of both sides, taking turns; the medians count."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """A miner's batched text generation next to one job at a time: `batched_vs_sequential`.

    The same jobs (distinct prompts, greedy, `--max-tokens` each) run on the
    model loaded once, after a warm-up of each side: one after another through
    the pipeline, then all at once from `--jobs` threads through the miner's
    batching (`workers.miner.batches`), which runs them as one batch; the
    sides take turns for `--repeat` rounds. Prints the median jobs/s of each
    side and their ratio (about 4 for 8 SmolLM2 jobs on a 2-core CPU), and
    checks every batched answer equals its sequential one: exits 1, naming
    the jobs, if one differs.
    """
    from workers.bench.batching import as_dict, run_batching_bench  # torch is imported only here

    settings = settings_with(torch_threads=threads)
    catalog = load_catalog(settings.catalog_path)
    data = as_dict(run_batching_bench(settings, catalog, model, device, jobs, max_tokens, repeat, err_console))
    if json_out:
        print_json(data)
    else:
        table = Table("side", "seconds", "jobs/s", title=f"{data['jobs']} x {data['max_tokens']} tokens of "
                      f"{data['model']}, {data['device']}, median of {data['repeat']}")
        table.add_row("one after another", f"{data['sequential_s']:.2f}", f"{data['sequential_jobs_per_s']:.2f}")
        table.add_row(f"batched ({data['batches']} batch(es))", f"{data['batched_s']:.2f}",
                      f"{data['batched_jobs_per_s']:.2f}")
        console.print(table)
        console.print(f"batched_vs_sequential: [bold]{data['batched_vs_sequential']:.2f}[/]")
    if not data["outputs_equal"]:
        err_console.print(f"[red]MISMATCH:[/] the batched answers of jobs {data['mismatched_jobs']} differ from "
                          "the same jobs run alone: batching changed what the model generates")
        raise typer.Exit(1)


@app.command("image-batching")
def image_batching(
    model: str = typer.Option("tiny-sd", "--model", help="The image model to load (files on this machine)."),
    jobs: int = typer.Option(4, "--jobs", min=2, max=16, help="Images per side: distinct prompts and seeds, one "
                             "size and step count (the model's reference job), so they share a batch."),
    device: str | None = typer.Option(None, "--device", help=DEVICE_HELP),
    threads: int | None = typer.Option(None, "--threads", min=1, help=THREADS_HELP),
    repeat: int = typer.Option(3, "--repeat", min=1, help="Rounds of both sides after a warm-up; medians count."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """A miner's batched image jobs next to one at a time: `ratio` (sequential s / batched s) and `identical`.

    Both sides render the same jobs on the model loaded once, taking turns for
    `--repeat` rounds; every batched PNG must equal its single render byte for
    byte (the output's sha256 is signed and an audit replays one job alone):
    exits 1 if one differs.
    """
    from workers.bench.image_batching import measure_image_batching  # torch is imported only here
    from workers.bench.models import load_models

    settings = settings_with(torch_threads=threads)
    catalog = load_catalog(settings.catalog_path)
    if catalog[model].image is None:
        raise typer.BadParameter(f"{model} is not an image model", param_hint="--model")
    _, pipelines = load_models(settings, catalog, [model], device, err_console)
    with err_console.status(f"{jobs} {model} images, {repeat} rounds of both sides"):
        result = measure_image_batching(pipelines[model], jobs, repeat)
    data = {"model": model, **asdict(result)}
    if json_out:
        print_json(data)
    else:
        console.print(f"{jobs} images of {model}: one at a time {result.sequential_s:.2f} s, batched "
                      f"{result.batched_s:.2f} s, ratio [bold]{result.ratio:.2f}[/], identical {result.identical}")
    if not result.identical:
        err_console.print("[red]MISMATCH:[/] a batched image differs from its single render")
        raise typer.Exit(1)


@worker_app.command("miner")
def bench_miner(key_file: Path = typer.Option(..., "--key-file"), size: int = typer.Option(2048, "--size")) -> None:
    """The null-model miner of `bench path`."""
    from workers.bench.path import run_null_miner

    settings = settings_with()
    run_null_miner(settings, load_catalog(settings.catalog_path), Wallet.from_file(key_file), size, err_console)


@worker_app.command("noop")
def bench_noop(
    expect: int = typer.Option(..., "--expect"), out: Path = typer.Option(..., "--out"),
    pool: str = typer.Option("threads", "--pool"), concurrency: int = typer.Option(1, "--concurrency"),
) -> None:
    """The baseline worker of `bench ledger`: a bare Celery task that does nothing."""
    from heurist.bench.ledger import run_noop_worker

    run_noop_worker(settings_with().resolved_broker_url(), pool, concurrency, expect, out)


@worker_app.command("put")
def bench_put() -> None:
    """The baseline worker of `bench path`: one presigned PUT per task."""
    from workers.bench.path import run_put_worker

    run_put_worker(settings_with())


@app.command("overhead")
def overhead(
    models: str = typer.Option("tiny-sd,smollm2-135m", "--models", help="Comma-separated model ids to time."),
    repeat: int = typer.Option(3, "--repeat", min=1, help="Timed jobs per side and model after one warm-up; the "
                               "median counts."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="torch threads of the miner and the direct "
                                       "worker alike (default: HEURIST_TORCH_THREADS, else half the cores)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """A real job through the network next to a direct call of the same loaded model, per model, in one run.

    Network: the client submits the model's reference job (its catalog defaults) and waits for the verdict
    (broker, a real `heurist miner` with the model loaded, S3, ledger verification). Direct: `pipeline.run` with
    the same parameters in a worker process with the miner's environment and torch threads. The sides take
    turns, one job at a time; ratio = direct / network (goal: 0.95 or more). Runs on the embedded SQLite broker
    and ledger unless HEURIST_BROKER_URL / HEURIST_DATABASE_URL say otherwise; storage is a SeaweedFS started
    for the run unless HEURIST_S3_ENDPOINT is set.
    """
    from workers.bench.overhead import as_dict, run_overhead_bench

    settings = settings_with(torch_threads=threads)
    catalog = load_catalog(settings.catalog_path)
    wanted = _wanted(catalog, models)
    if not wanted:
        raise typer.BadParameter("name at least one model", param_hint="--models")
    data = as_dict(run_overhead_bench(settings, catalog, wanted, repeat, err_console))
    if json_out:
        print_json(data)
        return
    table = Table("model", "reference job", "direct s", "network s", "direct / network",
                  title=f"{data['machine']}, {data['broker']} broker, {data['database']} ledger, median of "
                  f"{data['repeat']}")
    for model_id, m in data["models"].items():
        table.add_row(model_id, m["reference_job"], f"{m['direct_s']:.3f}", f"{m['network_s']:.3f}",
                      f"[bold]{m['ratio']:.3f}[/]")
    console.print(table)


@worker_app.command("direct")
def bench_direct(models: str = typer.Option(..., "--models")) -> None:
    """The direct side of `bench overhead`: the models loaded as a miner loads them, timed on request."""
    from workers.bench.overhead import run_direct_worker

    settings = settings_with()
    run_direct_worker(settings, load_catalog(settings.catalog_path), split_csv(models), err_console)
