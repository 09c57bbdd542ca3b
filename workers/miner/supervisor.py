"""One miner worker per GPU: plan each GPU by its own VRAM, start a pinned child for each, stop them together.

Each child is an ordinary ``heurist miner`` process with ``CUDA_VISIBLE_DEVICES`` naming its one GPU,
``--device cuda:0``, ``--vram <that GPU's GB>`` and ``--gpu-index N``, so it serves only the models that
fit its GPU, under its own miner identity (``Wallet.derive(N)``: the ledger keys miners by address and
records one device per miner) and hostname (``…-gpuN@host``). The supervisor itself never imports torch or
initialises CUDA: it only forks clean children.

It forwards SIGINT/SIGTERM to every child (Celery's warm shutdown: running jobs finish), reports every child
that exits, and restarts one that died unasked with the same argv and environment (``heurist.supervision``:
back-off from 1 s to 30 s, left down after 8 restarts in 10 min or when it failed within 30 s of the first
start, e.g. a model file missing on its GPU's box). It returns when all have exited for good: 0 if each stopped
cleanly, else the first failure's code. Children die with it even if it is SIGKILLed (parent-death signal).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO

from rich.console import Console

from heurist.catalog import Catalog, ModelSpec
from heurist.errors import ConfigError
from heurist.identity import Wallet
from heurist.processes import die_with_parent
from heurist.routing import servable
from heurist.settings import Settings, settings_env
from heurist.supervision import Restart, RestartBook, RestartPolicy
from workers.miner.gpus import Gpu, GpuDiscovery, discover_gpus, read_inventory, select_gpus

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
POLL_S = 0.2
INTERRUPTED = 130  # what `heurist` exits with after Ctrl-C


@dataclass(frozen=True)
class GpuPlan:
    """What one GPU's worker will serve (by that GPU's VRAM alone) and why the rest was left out."""

    gpu: Gpu
    models: list[ModelSpec]
    refused: list[str]

    @property
    def queues(self) -> list[str]:
        return [m.queue for m in self.models]


def plan_gpus(catalog: Catalog, model_ids: Sequence[str], gpus: Sequence[Gpu]) -> list[GpuPlan]:
    """One plan per GPU, in GPU order; a GPU that fits none of the models gets an empty plan."""
    plans = []
    for gpu in gpus:
        fits, refused = servable(catalog, model_ids, gpu.nominal_vram_gb)
        plans.append(GpuPlan(gpu=gpu, models=fits, refused=refused))
    return plans


def supervised_gpus(device: str | None, gpus: str | None, inventory: Path | None, vram: float | None,
                    console: Console) -> list[Gpu] | None:
    """The GPUs to start one worker each on, or None for the ordinary single in-process worker.

    Several GPUs found (or ``--gpus`` given) and no ``--device``: a worker per GPU. One GPU or none: None,
    so a one-GPU or CPU miner behaves exactly as before.
    """
    if device is not None and (gpus is not None or inventory is not None):
        flag = "--gpus" if gpus is not None else "--gpu-inventory"
        raise ConfigError(f"{flag} starts one worker per GPU and --device runs one worker on one device: "
                          "pass only one of them")
    if device is not None:
        return None
    found: GpuDiscovery = read_inventory(inventory) if inventory is not None else discover_gpus()
    for warning in found.warnings:
        console.print(f"[yellow]warning:[/] {warning}")
    if gpus is None and inventory is None and len(found.gpus) < 2:
        return None
    chosen = select_gpus(found.gpus, gpus)
    if not chosen:
        raise ConfigError("--gpus: no GPU found on this machine (nvidia-smi lists none and torch sees no CUDA); "
                          "drop --gpus to run on the CPU")
    if vram is not None:
        raise ConfigError("--vram plans one worker, but each GPU's worker plans with its own VRAM: drop --vram, "
                          "or run one worker with --device cuda:N --vram GB")
    return chosen


@dataclass
class Child:
    """A started per-GPU worker, how to start it again, and how to tell it apart in the supervisor's output."""

    plan: GpuPlan
    address: str
    argv: list[str]
    env: dict[str, str]
    proc: subprocess.Popen[bytes]
    reader: threading.Thread
    book: RestartBook
    due: float | None = None  # when its pending restart runs
    reported: bool = False  # its last exit is final and was reported

    @property
    def label(self) -> str:
        return f"gpu{self.plan.gpu.index}"


def child_argv(plan: GpuPlan, miner_args: Sequence[str], child_device: str) -> list[str]:
    """``heurist miner`` for one GPU: its device, its VRAM, its index (identity and hostname)."""
    return [sys.executable, "-m", "heurist.cli.main", "miner", *miner_args, "--device", child_device,
            "--vram", str(plan.gpu.nominal_vram_gb), "--gpu-index", str(plan.gpu.index)]


def child_env(settings: Settings, gpu: Gpu, threads: int, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment plus the settings (flags included), pinned to one GPU."""
    env = {**(os.environ if base is None else base), **settings_env(settings)}
    env.update(CUDA_VISIBLE_DEVICES=gpu.visible_id, CUDA_DEVICE_ORDER="PCI_BUS_ID", PYTHONUNBUFFERED="1",
               HEURIST_TORCH_THREADS=str(settings.torch_threads or threads))
    return env


def _pump(stream: IO[bytes], label: str, lock: threading.Lock) -> None:
    """Copy a child's output to our stderr, each line prefixed with its GPU."""
    for raw in iter(stream.readline, b""):
        line = raw.decode(errors="replace").rstrip("\n")
        with lock:
            sys.stderr.write(f"[{label}] {line}\n")
            sys.stderr.flush()
    stream.close()


def _launch(argv: Sequence[str], env: Mapping[str, str], label: str,
            lock: threading.Lock) -> tuple[subprocess.Popen[bytes], threading.Thread]:
    """One child in its own session (a terminal's Ctrl-C reaches only us; we forward it), and the thread that
    will relay its output (started by the caller)."""
    proc = subprocess.Popen(list(argv), env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True,
                            preexec_fn=die_with_parent(signal.SIGTERM, takes_ctrl_c=True))
    assert proc.stdout is not None
    return proc, threading.Thread(target=_pump, args=(proc.stdout, label, lock), daemon=True)


@dataclass
class Supervisor:
    """Starts the children, restarts one that dies unasked (``heurist.supervision``), forwards stop signals,
    waits for all of them."""

    console: Console
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    children: list[Child] = field(default_factory=list)
    stopping: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, plan: GpuPlan, address: str, argv: Sequence[str], env: Mapping[str, str]) -> Child:
        proc, reader = _launch(argv, env, f"gpu{plan.gpu.index}", self._lock)
        child = Child(plan=plan, address=address, argv=list(argv), env=dict(env), proc=proc, reader=reader,
                      book=RestartBook(self.policy))
        self.children.append(child)
        return child

    def relay_output(self) -> None:
        """Start copying the children's output, once all are started (``die_with_parent`` keeps a fork made
        while these threads run safe: its hook takes no lock)."""
        for child in self.children:
            child.reader.start()

    def forward(self, signum: int, _frame: FrameType | None = None) -> None:
        """Pass a stop signal to every child still running (a second one makes Celery stop at once)."""
        self.stopping = True
        for child in self.children:
            if child.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.proc.pid, signum)

    def wait(self) -> int:
        """Until every child has exited for good; reports each exit and restart; 0 only if all stopped cleanly."""
        previous = {sig: signal.signal(sig, self.forward) for sig in STOP_SIGNALS}
        try:
            while any(child.proc.poll() is None or child.due is not None for child in self.children):
                self._supervise(time.monotonic())
                time.sleep(POLL_S)
            self._supervise(time.monotonic())
        except BaseException:
            self.forward(signal.SIGTERM)  # nobody outlives us
            raise
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        for child in self.children:
            child.reader.join(timeout=5)
        codes = [self._exit_code(child) for child in self.children]
        return next((code for code in codes if code), 0)

    def _exit_code(self, child: Child) -> int:
        code = child.proc.returncode
        if code is None:
            return 1
        if code < 0:  # killed by a signal: clean if it was the stop we forwarded
            return 0 if self.stopping and -code in STOP_SIGNALS else 128 - code
        if code == INTERRUPTED and self.stopping:  # the child's CLI reporting the Ctrl-C we forwarded
            return 0
        return code

    def _supervise(self, now: float) -> None:
        for child in self.children:
            if child.due is not None:
                if self.stopping:
                    child.due, child.reported = None, True  # asked to stop while it waited: stays down
                elif now >= child.due:
                    self._restart(child, now)
            elif not child.reported and child.proc.poll() is not None:
                self._report_exit(child, now)

    def _report_exit(self, child: Child, now: float) -> None:
        code = self._exit_code(child)
        how = "stopped" if code == 0 else f"[red]exited with code {code}[/] (see its \\[{child.label}] lines)"
        note = ""
        if not self.stopping:
            verdict = child.book.after_exit(now, child.proc.returncode)
            if isinstance(verdict, Restart):
                child.due = now + verdict.delay_s
                note = (f" without being asked; restarting in {verdict.delay_s:g}s "
                        f"(restart {verdict.recent} in {self.policy.window_s:g}s)")
            else:
                note = f" without being asked; not restarted: {verdict.reason}"
        child.reported = child.due is None
        running = sum(c.proc.poll() is None for c in self.children)
        self.console.print(f"{child.label} worker (pid {child.proc.pid}) {how}{note}; {running} still running",
                           soft_wrap=True)

    def _restart(self, child: Child, now: float) -> None:
        child.due = None
        child.book.restarting(now)
        try:
            child.proc, child.reader = _launch(child.argv, child.env, child.label, self._lock)
        except OSError as err:  # this GPU's worker only: the others keep serving, and it is tried again
            self.console.print(f"{child.label} worker could not be restarted ({err}); trying again", soft_wrap=True)
            child.due = now + child.book.policy.backoff_max_s
            return
        child.reader.start()
        if self.stopping:  # a stop signal arrived while it was being started
            self.forward(signal.SIGTERM)
        self.console.print(f"{child.label} worker restarted (pid {child.proc.pid})", soft_wrap=True)


def describe(child: Child) -> str:
    """The one line an operator reads per GPU worker."""
    gpu, plan = child.plan.gpu, child.plan
    return (f"{child.label} {gpu.name} ({gpu.nominal_vram_gb} GB, CUDA_VISIBLE_DEVICES={gpu.visible_id}): "
            f"miner {child.address} models {','.join(m.id for m in plan.models)} "
            f"queues {','.join(plan.queues)} pid {child.proc.pid}")


def run_supervisor(settings: Settings, catalog: Catalog, wallet: Wallet, gpus: Sequence[Gpu],
                   model_ids: Sequence[str] | None, miner_args: Sequence[str], child_device: str,
                   console: Console) -> int:
    """Start one worker per GPU that fits a wanted model and wait for them; returns the exit code.

    ``miner_args`` are the operator's ``heurist miner`` options every child repeats (key file, models,
    log level); the broker and other settings travel in the children's environment, never on their
    command lines. ``child_device`` is ``cuda:0`` (the one GPU each child sees), or ``cpu`` when testing
    with ``--gpu-inventory``.
    """
    plans = plan_gpus(catalog, list(catalog) if model_ids is None else model_ids, gpus)
    serving = [p for p in plans if p.models]
    for plan in plans:
        if not plan.models:
            more = f"; and {len(plan.refused) - 1} more" if len(plan.refused) > 1 else ""
            console.print(f"[yellow]gpu{plan.gpu.index} {plan.gpu.name} skipped:[/] it fits none of the "
                          f"{len(plan.refused)} requested models ({plan.refused[0]}{more})", soft_wrap=True)
    if not serving:
        raise ConfigError("no GPU here fits any of the requested models (see `heurist doctor`)")
    threads = max(1, (os.cpu_count() or 1) // len(serving))
    supervisor = Supervisor(console, RestartPolicy.from_settings(settings))
    try:
        for plan in serving:
            child = supervisor.start(plan, wallet.derive(plan.gpu.index).address,
                                     child_argv(plan, miner_args, child_device),
                                     child_env(settings, plan.gpu, threads))
            console.print(describe(child), soft_wrap=True, markup=False)  # one line per child, even in a pipe
    except BaseException:
        supervisor.forward(signal.SIGTERM)
        raise
    supervisor.relay_output()
    console.print(f"supervising {len(serving)} miner workers; Ctrl-C or SIGTERM stops them all")
    return supervisor.wait()
