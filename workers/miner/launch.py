"""Start a miner: detect the device, verify and load pipelines once, announce, then consume.

Pipelines are loaded in this process before the worker starts, and jobs run in this same process (``threads``
pool, one thread per job a batch can hold, ``workers.miner.batches``; ``solo``, one job at a time, on the embedded
broker), so nothing ever forks after CUDA is initialised and no task ever loads a model.

A privacy miner (``heurist miner --private``, issue 16) also consumes each served model's private queue
(``private.<tier>.<model>``), holds the way to private jobs' keys (``workers.miner.private``: it will not start
without HEURIST_KEYRELEASE_NODES) and, right after its hello, sends the ledger its signed registration (the policy
version it accepts and its X25519 key), through the same inbox as the hello.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from celery import Celery
from rich.console import Console

from heurist.access.miner_app import WORKER_OPTIONS, confine_miner
from heurist.catalog import Catalog, ModelSpec
from heurist.celery_app import create_app, only_tasks, run_worker, worker_pool
from heurist.errors import ConfigError, ModelNotPresentError
from heurist.identity import Wallet
from heurist.jobs import MinerHello, SignedHello
from heurist.routing import servable, tier_of
from heurist.services import Services
from heurist.settings import Settings
from heurist.signing import DEFAULT_DOMAIN, Domain, sign_message
from tasks.miner import register_miner_tasks
from tasks.names import MINER_TASKS, REGISTER_MINER, REGISTER_PRIVACY
from workers.miner.admission import Admission
from workers.miner.device import Device, detect_device
from workers.miner.heartbeat import install_heartbeats
from workers.miner.middleware import Middleware, default_middleware, wrap_pipelines
from workers.miner.pipelines import load_pipeline
from workers.miner.pipelines.backend import Pipeline
from workers.miner.private import PrivateJobs
from workers.miner.runtime import MinerRuntime
from workers.miner.watchdog import install_watchdog

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class MinerPlan:
    """What this miner will serve and why the rest was left out."""

    device: Device
    vram_gb: float
    models: list[ModelSpec]
    refused: list[str]
    gpu_index: int | None = None  # set when one of a multi-GPU box's workers (workers.miner.supervisor)
    operator: str | None = None  # that box's own address, whose broker user its workers share

    @property
    def queues(self) -> list[str]:
        return [m.queue for m in self.models]

    @property
    def tier(self) -> str:
        """The largest VRAM class among the models served."""
        return tier_of(self.models) or "none"


def plan_miner(catalog: Catalog, model_ids: Sequence[str], vram_gb: float | None, device: Device) -> MinerPlan:
    """Pick the models that fit this device (an explicit ``vram_gb`` overrides what was detected)."""
    vram = device.plan_vram_gb if vram_gb is None else vram_gb
    fits, refused = servable(catalog, model_ids, vram)
    if not fits:
        raise ConfigError("this miner can serve none of the requested models: " + "; ".join(refused))
    return MinerPlan(device=device, vram_gb=vram, models=fits, refused=refused)


def load_pipelines(plan: MinerPlan, models_dir: Path, console: Console,
                   skip_missing: bool = False) -> dict[str, Pipeline]:
    """Verify each model's files against the catalog sha256, then load it, once.

    With ``skip_missing`` (no --models given) a model whose files are not here is left out, not an error;
    a file that is here but does not match its sha256 is always an error.
    """
    loaded: dict[str, Pipeline] = {}
    for spec in plan.models:
        with console.status(f"verifying and loading {spec.id} on {plan.device.torch_device}"):
            started = time.perf_counter()
            try:
                loaded[spec.id] = load_pipeline(spec, plan.device, models_dir)
            except ModelNotPresentError as err:
                if not skip_missing:
                    raise
                console.print(f"[yellow]not serving[/] {err}")
                continue
        console.print(f"loaded [bold]{spec.id}[/] ({spec.queue}) in {time.perf_counter() - started:.1f}s")
    if not loaded:
        raise ConfigError("no model this miner could serve is on this machine (see `heurist models verify`)")
    return loaded


def announce(app: Celery, wallet: Wallet, plan: MinerPlan, ledger_queue: str, delegation: str | None = None,
             domain: Domain = DEFAULT_DOMAIN) -> None:
    """Send a signed hello to the ledger before consuming, so our first completion finds us registered. A GPU
    worker's hello names its operator and carries the operator's ``delegation`` of its key."""
    operator = plan.operator if delegation is not None else None
    hello = MinerHello(miner=wallet.address, operator=operator, models=[m.id for m in plan.models],
                       queues=plan.queues, device=plan.device.info, started_at=time.time())
    signed = SignedHello(hello=hello, signature=sign_message(wallet, hello, domain), operator_signature=delegation)
    app.send_task(REGISTER_MINER, args=[signed.model_dump(mode="json")], queue=ledger_queue)


def register_privacy(app: Celery, privacy: PrivateJobs, ledger_queue: str) -> None:
    """Send a privacy miner's signed registration to the ledger, after its hello (key-release nodes seal shares
    to the X25519 key it publishes, once an operator approved it: `heurist privacy approve ADDRESS`)."""
    signed = privacy.registration()
    app.send_task(REGISTER_PRIVACY, args=[signed.model_dump(mode="json")], queue=ledger_queue)


def worker_hostname(wallet: Wallet, plan: MinerPlan) -> str:
    """``miner-<address>-<tier>@host``, the worker's name in its logs; a multi-GPU box's worker is
    ``miner-<operator>-<tier>-gpuN-<its own address>@host``. (Miners answer no remote control: monitoring shows
    them from the ledger's verified heartbeats, ``heurist.ledger.miner_events``.)"""
    tier = plan.tier
    if plan.gpu_index is None:
        return f"miner-{wallet.address.lower()}-{tier}@{socket.gethostname()}"
    operator = (plan.operator or wallet.address).lower()
    return f"miner-{operator}-{tier}-gpu{plan.gpu_index}-{wallet.address.lower()}@{socket.gethostname()}"


@dataclass(frozen=True)
class MinerOptions:
    """How to run one miner worker, beyond its settings, catalog and key (``heurist miner``'s options)."""

    model_ids: tuple[str, ...] | None = None  # None: every catalog model that fits and whose files are here
    vram_gb: float | None = None  # plan for this much VRAM instead of what was detected
    device_kind: str | None = None  # "cpu", "cuda" or "cuda:N"; None: detect
    loglevel: str = "INFO"
    gpu_index: int | None = None  # this is the worker of that GPU of a multi-GPU box ...
    operator: str | None = None  # ... whose own address is this
    delegation: str | None = None  # ... and which signed its delegation (heurist.signing.sign_delegation)
    middleware: tuple[Middleware, ...] = ()  # run after the defaults (the cheats of workers.testing plug in here)
    private: bool = False  # a privacy miner: also consumes private queues and registers (`heurist miner --private`)


def run_miner(settings: Settings, catalog: Catalog, wallet: Wallet, options: MinerOptions,
              console: Console | None = None) -> None:
    """Load everything, announce, and consume this miner's queues until stopped."""
    console = console or Console(stderr=True)
    wanted = list(catalog) if options.model_ids is None else list(options.model_ids)
    plan = plan_miner(catalog, wanted, options.vram_gb, detect_device(options.device_kind, settings.torch_threads))
    plan = replace(plan, gpu_index=options.gpu_index, operator=options.operator)
    for reason in plan.refused:
        console.print(f"[yellow]not serving[/] {reason}")
    if options.private:
        PrivateJobs.from_settings(settings, wallet)  # a missing key-release setting fails before models load
    serve(settings, wallet, plan, load_pipelines(plan, settings.resolved_models_dir(), console,
                                                 skip_missing=options.model_ids is None),
          options.loglevel, console, middleware=options.middleware, delegation=options.delegation,
          private=options.private)


def serve(settings: Settings, wallet: Wallet, plan: MinerPlan, pipelines: dict[str, Pipeline],
          loglevel: str = "INFO", console: Console | None = None, middleware: Sequence[Middleware] = (),
          delegation: str | None = None, private: bool = False) -> None:
    """Announce, then consume the queues of the plan's models that were loaded, with ``pipelines``, until
    stopped (threads, never a fork). ``middleware`` runs after the defaults; each one's load-time hook sees
    the pipelines once, here, before the runtime is built. ``private``: a privacy miner (module docstring)."""
    console = console or Console(stderr=True)
    privacy = PrivateJobs.from_settings(settings, wallet) if private else None  # before anything is started
    chain = [*default_middleware(), *middleware]
    pipelines = wrap_pipelines(pipelines, chain)  # rebound: a replaced pipeline is not kept alive here
    plan = replace(plan, models=[m for m in plan.models if m.id in pipelines])
    queues = plan.queues + ([m.private_queue for m in plan.models] if private else [])
    # as many jobs in flight as the largest batch: each holds a thread (its whole path, acked late) and one
    # prefetched message (prefetch_multiplier 1 x concurrency); the embedded broker's solo pool runs one job
    pool, max_batch = worker_pool(settings.resolved_broker_url(), settings.miner_max_batch)
    runtime = MinerRuntime(wallet=wallet, device=plan.device.info, pipelines=pipelines, middleware=chain,
                           admission=Admission.from_settings(settings, plan.models, private=private),
                           domain=Domain.of(settings), privacy=privacy, max_batch=max_batch,
                           batch_window_s=settings.miner_batch_window_ms / 1000,
                           inline_bytes=settings.miner_inline_bytes)
    app = create_app(settings, Services("miner", miner_runtime=runtime))
    register_miner_tasks(app, settings.ledger_queue)
    only_tasks(app, MINER_TASKS)  # a job message naming another task (celery.group, ...) is refused
    confine_miner(app, settings.resolved_broker_url(), settings.ledger_queue, queues)
    install_heartbeats(app, wallet, settings.heartbeat_interval_s, settings.ledger_queue, Domain.of(settings))
    install_watchdog(app, runtime, settings.ledger_queue)  # a model call hung past its hard limit: report, exit 75
    announce(app, wallet, plan, settings.ledger_queue, delegation, Domain.of(settings))
    if privacy is not None:
        register_privacy(app, privacy, settings.ledger_queue)
    console.print(f"{'privacy ' if private else ''}miner {wallet.address} consuming {', '.join(queues)}")
    worker = app.Worker(hostname=worker_hostname(wallet, plan), queues=queues, pool=pool,
                        concurrency=runtime.batches.concurrency, prefetch_multiplier=1, loglevel=loglevel, quiet=True,
                        **WORKER_OPTIONS)  # each needs a shared exchange a miner user may not touch
    try:
        run_worker(worker, "miner")
    finally:
        runtime.batches.close()
