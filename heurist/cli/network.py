"""Commands that run or inspect the network: routes, miner, ledger, points, models, db."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from heurist.catalog import load_catalog
from heurist.cli.common import console, print_json, redacted, settings_with, split_csv
from heurist.errors import ConfigError, HeuristError
from heurist.identity import Wallet
from heurist.routing import route_table

models_app = typer.Typer(
    help="Model files: build local models, pin hashes.", no_args_is_help=True,
    rich_markup_mode="markdown",
)
db_app = typer.Typer(
    help="Ledger database schema (Alembic).", no_args_is_help=True,
    rich_markup_mode="markdown",
)


def routes(json_out: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """Print the queue table: which queue each model's jobs travel on, by VRAM tier."""
    rows = route_table(load_catalog(settings_with().catalog_path))
    if json_out:
        print_json([row.__dict__ for row in rows])
        return
    table = Table("model", "family", "tier", "queue", "coefficient")
    for row in rows:
        table.add_row(row.model_id, row.family, f"{row.vram} ({row.vram_gb} GB)", row.queue, f"{row.coefficient:g}")
    console.print(table)


def miner(
    key_file: Path | None = typer.Option(None, "--key-file", help="Miner key file (or set HEURIST_MINER_KEY)."),
    models: str | None = typer.Option(None, "--models", help="Comma-separated model ids (default: all that fit)."),
    vram: float | None = typer.Option(None, "--vram", help="VRAM in GB to plan for (default: detected)."),
    broker: str | None = typer.Option(None, "--broker", help="Broker URL (default: HEURIST_BROKER_URL)."),
    device: str | None = typer.Option(None, "--device", help="Force 'cpu' or 'cuda' (default: detect)."),
    threads: int | None = typer.Option(None, "--threads", min=1,
                                       help="torch threads (default: HEURIST_TORCH_THREADS, else all cores)."),
    loglevel: str = typer.Option("INFO", "--loglevel"),
    gpus: str | None = typer.Option(
        None, "--gpus", help="On a box with several GPUs, one worker per GPU is started (each pinned with "
        "CUDA_VISIBLE_DEVICES, serving what fits its VRAM, under its own derived address: `heurist wallet "
        "addresses`). Choose them: 'all' (default) or indices/UUIDs as nvidia-smi lists them, e.g. '0,2'."),
    gpu_index: int | None = typer.Option(
        None, "--gpu-index", min=0, hidden=True, help="Set by the multi-GPU supervisor for its children: this "
        "worker is GPU N's, so its key is derived (Wallet.derive(N)) and its hostname ends in -gpuN."),
    gpu_inventory: Path | None = typer.Option(
        None, "--gpu-inventory", hidden=True, help="Testing the multi-GPU supervisor without GPUs: take the GPU "
        "list from this file (nvidia-smi --query-gpu=index,name,memory.total,uuid --format=csv,noheader,nounits "
        "output) instead of probing, and run each GPU's worker on the CPU (--device cpu)."),
    private: bool = typer.Option(
        False, "--private", help="Be a privacy-enabled miner: also serve private jobs (private.<tier>.<model>), "
        "whose keys come from the key-release nodes (HEURIST_KEYRELEASE_NODES); registers this miner's acceptance "
        "of HEURIST_PRIVACY_POLICY_VERSION and its X25519 key with the ledger at start. An operator approves it "
        "(`heurist privacy approve ADDRESS`)."),
) -> None:
    """Run a miner: verify and load models once, then consume their queues and earn points.

    With several GPUs (and no --device) it supervises one worker per GPU; Ctrl-C stops them all.
    """
    from workers.miner.supervisor import run_supervisor, supervised_gpus  # imports no torch

    settings = settings_with(broker_url=broker, torch_threads=threads)
    catalog = load_catalog(settings.catalog_path)
    wallet = _miner_wallet(key_file, settings.miner_key.get_secret_value() if settings.miner_key else None)
    wanted = split_csv(models) or None
    per_gpu = supervised_gpus(device, gpus, gpu_inventory, vram, console) if gpu_index is None else None
    if per_gpu is not None:
        raise typer.Exit(run_supervisor(settings, catalog, wallet, per_gpu, wanted,
                                        _per_gpu_args(key_file, wanted, loglevel, private),
                                        "cpu" if gpu_inventory else "cuda:0", console))
    from heurist.signing import Domain, sign_delegation
    from workers.miner.launch import MinerOptions, run_miner  # torch is imported only on the miner side

    operator, delegation = wallet.address, None
    if gpu_index is not None:  # the operator vouches for its GPU worker's key: the ledger binds it to its user
        worker = wallet.derive(gpu_index)
        wallet, delegation = worker, sign_delegation(wallet, worker.address, Domain.of(settings))
    run_miner(settings, catalog, wallet, MinerOptions(model_ids=None if wanted is None else tuple(wanted),
                                                      vram_gb=vram, device_kind=device, loglevel=loglevel,
                                                      gpu_index=gpu_index, operator=operator,
                                                      delegation=delegation, private=private))


def _per_gpu_args(key_file: Path | None, wanted: list[str] | None, loglevel: str,
                  private: bool = False) -> list[str]:
    """The options every per-GPU worker repeats; the broker and settings go in its environment instead."""
    args = ["--loglevel", loglevel] + (["--private"] if private else [])
    if key_file is not None:
        args += ["--key-file", str(key_file.resolve())]
    if wanted:
        args += ["--models", ",".join(wanted)]
    return args


def _miner_wallet(key_file: Path | None, env_key: str | None) -> Wallet:
    if key_file is not None:
        return Wallet.from_file(key_file)
    if env_key:
        return Wallet.from_key(env_key)
    raise ConfigError("no miner key: pass --key-file PATH or set HEURIST_MINER_KEY (create one: `heurist wallet new`)")


def ledger(
    concurrency: int | None = typer.Option(None, "--concurrency", min=1, help="Ledger worker threads (default: "
                                           "HEURIST_LEDGER_CONCURRENCY, 128; completions are verified in batches "
                                           "of HEURIST_LEDGER_BATCH)."),
    loglevel: str = typer.Option("INFO", "--loglevel"),
) -> None:
    """Run the trusted ledger consumer: verify completions and credit points exactly once."""
    from heurist.audit.middleware import audit_middleware
    from heurist.ledger.consumer import run_ledger

    settings = settings_with()
    run_ledger(settings, load_catalog(settings.catalog_path), audit_middleware, concurrency=concurrency,
               loglevel=loglevel)


def auditor(
    models: str = typer.Option(..., "--models", help="Comma-separated model ids to replay (loaded once)."),
    threads: int | None = typer.Option(None, "--threads", min=1,
                                       help="torch threads (default: HEURIST_TORCH_THREADS, else all cores)."),
    loglevel: str = typer.Option("INFO", "--loglevel"),
    key_file: Path | None = typer.Option(None, "--key-file", help="The auditor's own key (hex, 0600): with it, "
                                         "it registers for private jobs and audits those whose ACC admits it, "
                                         "once an operator runs `heurist privacy approve ADDR`."),
) -> None:
    """Run a trusted auditor: replay sampled jobs of these models and record verdicts and penalties."""
    from workers.audit.auditor import run_auditor

    settings = settings_with(torch_threads=threads)
    run_auditor(settings, load_catalog(settings.catalog_path), split_csv(models), loglevel=loglevel,
                key_file=key_file)


def points(json_out: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """Points per miner, from the append-only ledger: Waifu (image) and Llama (text) points are the credited
    (available) ones per testnet pool; points is the total, escrowed points included."""
    from heurist.ledger.factory import open_reader
    from heurist.ledger.pools import PoolPoints

    settings = settings_with()
    reader = open_reader(settings)
    rows = reader.miner_points()
    pools = reader.points_by_pool()
    pool = {r.address: pools.get(r.address) or PoolPoints(r.address) for r in rows}
    if json_out:
        print_json([{"miner": r.address, "jobs": r.jobs, "points": r.points,
                     "waifu_points": pool[r.address].waifu_points, "llama_points": pool[r.address].llama_points}
                    for r in rows])
        return
    if not rows:
        where = redacted(settings.resolved_database_url())
        console.print(f"no miners yet in {where} (choose the ledger with HEURIST_DATABASE_URL)")
        return
    table = Table("miner", "jobs", "waifu points", "llama points", "points",
                  caption="waifu/llama: credited points per pool; points: all, escrowed included")
    for r in rows:
        p = pool[r.address]
        table.add_row(r.address, str(r.jobs), f"{p.waifu_points:.6f}", f"{p.llama_points:.6f}", f"{r.points:.6f}")
    console.print(table)


@models_app.command("build")
def build(model: str = typer.Argument("tiny-sd", help="A catalog model with a local builder.")) -> None:
    """Build a locally built model (tiny-sd) and record its sha256 in the catalog lock."""
    from workers.miner.pipelines import BUILDERS

    settings = settings_with()
    spec = load_catalog(settings.catalog_path)[model]
    builder = BUILDERS.get(spec.source.ref)
    if builder is None:
        raise ConfigError(f"model {model!r} is not built locally (its source is {spec.source.kind.value})")
    hashes = builder(settings.resolved_models_dir() / spec.id)
    console.print(f"built {model}: {len(hashes)} files recorded in {settings.resolved_models_dir()}")


@models_app.command("pin")
def pin(model: str = typer.Argument(..., help="A catalog model whose files are on this machine.")) -> None:
    """Record the sha256 of a model's local files (for a model the catalog does not pin yet, e.g. Mixtral).

    From then on the miner refuses the model if any of those files changes.
    """
    from workers.miner.model_files import pin_model

    settings = settings_with()
    hashes = pin_model(load_catalog(settings.catalog_path)[model], settings.resolved_models_dir())
    for path, digest in sorted(hashes.items()):
        console.print(f"{digest}  {path}")
    console.print(f"pinned {len(hashes)} files of {model} in {settings.resolved_models_dir()}")


@models_app.command("verify")
def verify(models: str | None = typer.Option(None, "--models", help="Comma-separated ids (default: all).")) -> None:
    """Check model files on this machine against the catalog sha256 (what a miner does before loading)."""
    from workers.miner.model_files import verify_model_files

    settings = settings_with()
    catalog = load_catalog(settings.catalog_path)
    table = Table("model", "status")
    failed = 0
    for model_id in split_csv(models) or list(catalog):
        try:
            root = verify_model_files(catalog[model_id], settings.resolved_models_dir())
            table.add_row(model_id, f"[green]ok[/] {root}")
        except HeuristError as err:
            failed += 1
            table.add_row(model_id, f"[red]{err}[/]")
    console.print(table)
    if failed:
        raise typer.Exit(1)


@db_app.command("upgrade")
def db_upgrade(revision: str = typer.Argument("head")) -> None:
    """Migrate the ledger database up (default: to the newest schema)."""
    from heurist.db.migrate import upgrade

    upgrade(settings_with().resolved_database_url(), revision)
    console.print(f"ledger database at {revision}")


@db_app.command("downgrade")
def db_downgrade(revision: str = typer.Argument(..., help="Target revision, e.g. 'base'.")) -> None:
    """Migrate the ledger database down."""
    from heurist.db.migrate import downgrade

    downgrade(settings_with().resolved_database_url(), revision)
    console.print(f"ledger database at {revision}")


def register(app: typer.Typer) -> None:
    app.command("routes")(routes)
    app.command("miner")(miner)
    app.command("ledger")(ledger)
    app.command("points")(points)
    app.command("auditor")(auditor)
