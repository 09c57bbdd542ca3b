"""`heurist bench overhead`: a real job through the network against the same job on the loaded model, in one run.

Network side: the client submits the model's reference job (``workers.bench.models.reference_params``: the
catalog's defaults, a fixed prompt and seed) and waits for the verdict; in between, the broker, a real
`heurist miner` process with the model loaded (runtime, middleware, batcher, presigned PUT, EIP-712 signing)
and the ledger (signature, HEAD with checksum, crediting). Direct side: ``pipeline.run`` of the same
parameters, timed around the call alone.

Fairness: the direct call runs in its own process (`heurist bench worker direct`), started with the miner's own
environment (``EmbeddedNetwork.miner_env``: the same HEURIST_TORCH_THREADS and models directory) and loaded by
the miner's own path (``plan_miner``, ``load_pipelines``), so both sides run the same pipeline object type on the
same number of torch threads in a process of the same kind; timing inside the miner would have needed a hook
in the runtime. The sides take turns (network, then direct, the order swapped every round), one job at a
time, after one warm-up of each, with a short pause between jobs so the other process's idle torch threads
have stopped spinning; the median of ``repeat`` rounds counts. ratio = direct / network (1.0: the network
costs nothing; the goal is 0.95 or more).

Measured here (2 cores shared with other test runs, so one tiny-sd job took 1.1 to 4 s; 1 torch thread; median
of 5): RabbitMQ + PostgreSQL, tiny-sd 64x64x20 direct 1.23 s, network 1.26 s, ratio 0.974 (32 ms); smollm2-135m
64 tokens 5.20 s against 5.50 s, 0.946. Embedded SQLite: smollm2-135m 4.66 s against 4.82 s, 0.967; tiny-sd's
medians were within the noise (ratio 1.19), its fastest runs 1.12 s direct and 1.33 s network: the embedded
broker and the client poll every 0.1 s (``heurist.broker``, result_poll_interval_s), where RabbitMQ pushes.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from rich.console import Console

from heurist.catalog import Catalog
from heurist.client import Client
from heurist.embedded import EmbeddedNetwork, heurist_cmd, wait_until
from heurist.errors import HeuristError
from heurist.jobs import JobState
from heurist.settings import Settings
from workers.bench.models import LATER, reference_params

DEFAULT_MODELS = ("tiny-sd", "smollm2-135m")
PAUSE_S = 0.3  # between jobs: idle torch threads of the other process stop spinning
MARK = "BENCH "  # the direct worker's protocol lines on stdout start with this (libraries may print too)
TIMEOUT_S = 600.0


@dataclass(frozen=True)
class ModelOverhead:
    model_id: str
    reference_job: str
    direct_s: float  # medians
    network_s: float
    ratio: float  # direct / network
    overhead_s: float  # median of each round's network - direct (the two ran back to back: drift cancels)
    direct_runs_s: tuple[float, ...]
    network_runs_s: tuple[float, ...]


@dataclass(frozen=True)
class OverheadBench:
    machine: str
    torch_threads: int
    broker: str
    database: str
    repeat: int
    models: tuple[ModelOverhead, ...]


def as_dict(bench: OverheadBench) -> dict[str, Any]:
    data = asdict(bench)
    data["models"] = {m["model_id"]: m for m in data["models"]}
    return data


def run_direct_worker(settings: Settings, catalog: Catalog, model_ids: Sequence[str], console: Console) -> None:
    """The direct side: load as a miner does, say ready, then time one reference job per model id read on stdin."""
    from workers.bench.models import describe_job, device_label, load_models, timed

    device, pipelines = load_models(settings, catalog, model_ids, "cpu", console)
    _say({"ready": True, "machine": device_label(device), "torch_threads": device.info.torch_threads})
    for line in sys.stdin:
        model_id = line.strip()
        pipeline = pipelines[model_id]
        params = reference_params(pipeline.spec)
        seconds, output = timed(lambda: pipeline.run(params, LATER))  # noqa: B023 - called at once
        _say({"model": model_id, "seconds": seconds, "job": describe_job(params, output)})


def _say(data: dict[str, Any]) -> None:
    print(MARK + json.dumps(data), flush=True)


def _hear(stream: IO[str], proc: subprocess.Popen[str], log: Path) -> dict[str, Any]:
    for line in stream:
        if line.startswith(MARK):
            return dict(json.loads(line[len(MARK):]))
    proc.wait(10)
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
    raise HeuristError(f"the direct bench worker exited ({proc.returncode}): {tail}")


def _network_job(client: Client, catalog: Catalog, model_id: str) -> float:
    spec = catalog[model_id]
    started = time.perf_counter()
    handle = client.submit_params(spec, reference_params(spec))
    [view] = client.wait_all([handle.id], TIMEOUT_S)
    seconds = time.perf_counter() - started
    if view.state is not JobState.COMPLETED:
        raise HeuristError(f"bench job {handle.id} on {model_id} ended {view.state.value}: {view.error}")
    return seconds


def run_overhead_bench(base: Settings, catalog: Catalog, model_ids: Sequence[str], repeat: int,
                       console: Console) -> OverheadBench:
    """Start the direct worker, then a ledger and a miner serving ``model_ids``; time both sides; stop all."""
    with tempfile.TemporaryDirectory(prefix="heurist-overhead-") as tmp:
        root = Path(tmp)
        with EmbeddedNetwork(root, base=base, miner_models=tuple(model_ids),
                             models_dir=base.resolved_models_dir()) as net:
            log = net.logs / "bench-direct.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            with log.open("w") as err, subprocess.Popen(
                    heurist_cmd("bench", "worker", "direct", "--models", ",".join(model_ids)), env=net.miner_env(),
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True, bufsize=1) as proc:
                assert proc.stdin is not None and proc.stdout is not None
                try:
                    with console.status("loading the models in the direct worker"):
                        ready = _hear(proc.stdout, proc, log)

                    def direct(model_id: str) -> tuple[float, str]:
                        assert proc.stdin is not None and proc.stdout is not None
                        proc.stdin.write(model_id + "\n")
                        heard = _hear(proc.stdout, proc, log)
                        return float(heard["seconds"]), str(heard["job"])

                    settings = net.settings()
                    with Client(settings) as client:
                        wallet = net.start_miner(list(model_ids), name="bench-miner")
                        with console.status("starting the ledger and the miner"):
                            wait_until(lambda: client.ledger.is_registered(wallet.address), TIMEOUT_S,
                                       "the bench miner", check=net.check_alive)
                        results = _rounds(client, catalog, model_ids, repeat, direct, console)
                finally:
                    proc.stdin.close()
                    proc.wait(30)
    return OverheadBench(machine=str(ready["machine"]), torch_threads=int(ready["torch_threads"]),
                         broker=settings.resolved_broker_url().split("://")[0],
                         database=settings.resolved_database_url().split("://")[0], repeat=repeat,
                         models=tuple(results))


def _rounds(client: Client, catalog: Catalog, model_ids: Sequence[str], repeat: int, direct: Any,
            console: Console) -> list[ModelOverhead]:
    """Round 0 warms both sides up; then each round times every model once per side, in turns."""
    network_runs: dict[str, list[float]] = {m: [] for m in model_ids}
    direct_runs: dict[str, list[float]] = {m: [] for m in model_ids}
    jobs: dict[str, str] = {}
    for round_ in range(repeat + 1):
        for model_id in model_ids:
            with console.status(f"{model_id}: round {round_} of {repeat} (0 is the warm-up)"):
                for side in ("network", "direct") if round_ % 2 == 0 else ("direct", "network"):
                    time.sleep(PAUSE_S)
                    if side == "network":
                        seconds = _network_job(client, catalog, model_id)
                        runs = network_runs[model_id]
                    else:
                        seconds, jobs[model_id] = direct(model_id)
                        runs = direct_runs[model_id]
                    if round_ > 0:
                        runs.append(seconds)
    out = []
    for model_id in model_ids:
        direct_s, network_s = statistics.median(direct_runs[model_id]), statistics.median(network_runs[model_id])
        out.append(ModelOverhead(
            model_id=model_id, reference_job=jobs[model_id], direct_s=round(direct_s, 4),
            network_s=round(network_s, 4), ratio=round(direct_s / network_s, 3),
            overhead_s=round(statistics.median(n - d for n, d in zip(network_runs[model_id], direct_runs[model_id],
                                                                       strict=True)), 4),
            direct_runs_s=tuple(round(s, 4) for s in direct_runs[model_id]),
            network_runs_s=tuple(round(s, 4) for s in network_runs[model_id])))
    return out
