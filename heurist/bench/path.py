"""`heurist bench path`: the full job path against a bare Celery task doing one presigned PUT.

Both run in the same run, on the same broker, storage and machine, one solo worker each, after a warm-up.
The full path is everything a real job does except the model: client validation, ledger record, presign,
send, miner runtime, EIP-712 signing, ledger verification (signature, the output's sha256, size and token counts,
database write), the output stored and the client seeing the verdict. Its model answers at once
(``workers.bench.path.NullPipeline``) with ``--size`` bytes: up to 32 KiB they travel inside the completion and
the ledger stores them with one PUT (``heurist.ledger.inline``); ``HEURIST_MINER_INLINE_BYTES=0`` measures the
uploaded path (the miner's PUT, the ledger's HEAD, its freezing COPY and its GET).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

from celery.canvas import Signature
from rich.console import Console

from heurist.client import Client, TextRequest
from heurist.embedded import EmbeddedNetwork, heurist_cmd, wait_until
from heurist.errors import HeuristError
from heurist.jobs import JobState
from heurist.settings import Settings

BENCH_MODEL = "bench-null"
PUT_TASK, PUT_QUEUE, DONE_TASK, DONE_QUEUE = "heurist.bench.put", "bench.put", "heurist.bench.done", "bench.done"
WARMUP = 5
BENCH_ENTRY = f"""
[models.{BENCH_MODEL}]
family = "llm"
vram = "vram8"
coefficient = 1.0
coefficient_source = "benchmark only: answers at once"
description = "A null model for `heurist bench path`"
source = {{ kind = "build", ref = "none" }}
text = {{ max_tokens = 8, default_max_tokens = 1 }}
deadline = {{ base_s = 1200.0, per_unit_s = 0.0 }}
"""


@dataclass(frozen=True)
class Rate:
    jobs: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.jobs / self.seconds


@dataclass(frozen=True)
class PathBench:
    broker: str
    database: str
    jobs: int
    output_bytes: int
    baseline_per_s: float
    full_path_per_s: float
    ratio: float  # full path / baseline; 1.0 would mean the network adds nothing to a bare PUT task


def bench_catalog(directory: Path) -> Path:
    """The shipped catalog plus the null model."""
    path = directory / "catalog.toml"
    path.write_text(resources.files("heurist.catalog").joinpath("models.toml").read_text() + BENCH_ENTRY)
    return path


def _timed(run: Callable[[int], None], jobs: int) -> Rate:
    run(WARMUP)
    started = time.perf_counter()
    run(jobs)
    return Rate(jobs, time.perf_counter() - started)


def _baseline(client: Client, size: int) -> Callable[[int], None]:
    """N bare put tasks; each one's link callback lands on a queue we drain to know it is done."""
    done_link = Signature(DONE_TASK, app=client.app, queue=DONE_QUEUE)

    def run(n: int) -> None:
        urls = [client.store.presign_put(f"bench/put/{time.time_ns()}-{i}", 600) for i in range(n)]
        with client.app.connection_for_write() as conn:
            done = conn.SimpleQueue(DONE_QUEUE)
            for url in urls:
                client.app.send_task(PUT_TASK, args=[url, size], queue=PUT_QUEUE, link=done_link)
            for _ in range(n):
                done.get(block=True, timeout=120).ack()
            done.close()

    return run


def _full_path(client: Client) -> Callable[[int], None]:
    """N real jobs through the client; done when the ledger has credited them all (``Client.map``)."""

    def run(n: int) -> None:
        results = client.map([TextRequest("bench", BENCH_MODEL, max_tokens=1)] * n, timeout=300, progress=False)
        failed = [r for r in results if r.state is not JobState.COMPLETED]
        if failed:
            raise HeuristError(f"{len(failed)} bench jobs failed, e.g. {failed[0].job_id}: {failed[0].error}")

    return run


@contextmanager
def bench_network(base: Settings, size: int, console: Console) -> Iterator[tuple[Settings, Client]]:
    """Ledger, null miner (its own broker user on RabbitMQ) and put worker on ``base``'s services, the miner
    registered; yields the network's settings and a client. Everything stops when the block ends."""
    with tempfile.TemporaryDirectory(prefix="heurist-bench-") as tmp:
        root = Path(tmp)
        base = base.model_copy(update={"catalog_path": bench_catalog(root)})
        with EmbeddedNetwork(root, base=base) as net:
            wallet, key_file = net.new_key_file("bench-miner")
            net.spawn("bench-miner", heurist_cmd("bench", "worker", "miner", "--key-file", str(key_file),
                                                 "--size", str(size)),
                      net.miner_env(net.own_broker_url(wallet.address)))  # its own broker user, on RabbitMQ
            net.spawn("bench-put", heurist_cmd("bench", "worker", "put"), net.miner_env())
            settings = net.settings()
            with Client(settings) as client:
                with console.status("starting the ledger, the null miner and the baseline worker"):
                    wait_until(lambda: client.ledger.is_registered(net.wallets[0].address), 120,
                               "the bench miner", check=net.check_alive)
                yield settings, client


def run_path_bench(base: Settings, jobs: int, size: int, console: Console) -> PathBench:
    """Start ledger, null miner and put worker on ``base``'s services; measure both sides; stop all."""
    with bench_network(base, size, console) as (settings, client):
        with console.status(f"baseline: {jobs} Celery tasks, one presigned PUT each"):
            baseline = _timed(_baseline(client, size), jobs)
        with console.status(f"full job path: {jobs} jobs, submit to credited"):
            full = _timed(_full_path(client), jobs)
    return PathBench(broker=settings.resolved_broker_url().split("://")[0],
                     database=settings.resolved_database_url().split("://")[0], jobs=jobs, output_bytes=size,
                     baseline_per_s=round(baseline.per_second, 1), full_path_per_s=round(full.per_second, 1),
                     ratio=round(full.per_second / baseline.per_second, 3))


def as_dict(result: PathBench) -> dict[str, object]:
    return asdict(result)
