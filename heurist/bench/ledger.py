"""`heurist bench ledger`: verified completions per second of 1 and 2 ledger processes, next to Celery's no-op rate.

Each side drains N messages pre-filled before its workers start (``heurist.bench.ledger_rig``: fresh jobs, their
outputs in storage, completions signed by registered miner keys and published through the miners' own inboxes).
The ledgers are real ``heurist ledger`` processes with their default settings (threads, concurrency, batching,
the audit middleware); a run ends when every job has left QUEUED. The baseline is a bare Celery app (Celery's
defaults: prefetch multiplier 4, acks on receipt, no events) whose task does nothing, on the same pool type and
concurrency as one ledger, draining N messages with the same bodies (the signed completions).

Rates are steady-state: each side's per-message start times (the ledger's ``completions.received_at``, the no-op
worker's ``task_prerun``), the span from the 10th to the 90th percentile. Worker start-up, the second ledger
starting a little later and the last stragglers are left out the same way on both sides.

Measured here (2 cores shared with SeaweedFS, PostgreSQL, RabbitMQ and other test runs; 2,000 completions): the
no-op worker 2,080-2,630/s; one ledger 32/s before batching (2 threads, the old default), 123-139/s after
(``heurist.ledger.batch``); two ledgers 43/s before, 119-150/s after. ratio_1_vs_noop is about 0.05, far from
its goal of 1: a completion costs about 5.7 ms of the ledger's CPU (three S3 requests, a signature, its share of
the batches' statements, Celery's own work) where a no-op message costs Celery 0.4 ms, and on two cores a
second ledger process finds no core free (ratio_2_vs_1 about 1).
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from celery import Celery
from celery.signals import task_prerun
from rich.console import Console

from heurist.bench.ledger_rig import LedgerNetwork, LedgerRig
from heurist.bench.path import BENCH_MODEL, bench_catalog
from heurist.celery_app import worker_pool
from heurist.embedded import heurist_cmd, wait_until
from heurist.jobs import JobState
from heurist.processes import stop_all
from heurist.settings import Settings

NOOP_TASK, NOOP_QUEUE = "heurist.bench.noop", "bench.noop"


@dataclass(frozen=True)
class LedgerBench:
    broker: str
    database: str
    jobs: int  # completions per run (fresh jobs each run)
    outputs: str  # "inline" (in the completion, as miners send small outputs) or "uploaded" (PUT beforehand)
    miners: int  # miner keys (and inboxes) the completions are spread over
    pool: str  # of the ledgers and of the no-op worker
    concurrency: int  # threads of each ledger process and of the no-op worker
    ledger_batch: int  # completions verified and written together (HEURIST_LEDGER_BATCH)
    noop_per_s: float
    ledger_1_per_s: float
    ledger_2_per_s: float
    ratio_1_vs_noop: float  # goal: 1.0 or more
    ratio_2_vs_1: float  # how a second ledger process scales (2.0 would be linear)
    exactly_once: bool  # every job of both runs COMPLETED with exactly one points entry
    dead_letters: int  # messages kept in dead-letters during the run: 0


def steady_rate(stamps: list[float]) -> float:
    """Messages per second between the 10th and the 90th percentile of their start times."""
    s = sorted(stamps)
    lo, hi = len(s) // 10, len(s) - 1 - len(s) // 10
    if hi <= lo or s[hi] <= s[lo]:
        return float("nan")
    return (hi - lo) / (s[hi] - s[lo])


def _ledger_rate(rig: LedgerRig, jobs: int, ledgers: int, console: Console, timeout_s: float,
                 inline: bool) -> tuple[float, bool]:
    with console.status(f"{ledgers} ledger(s): preparing {jobs} jobs, outputs and signed completions"):
        signed = rig.completions(jobs, inline=inline)
        rig.publish(signed)
    ids = [one.completion.job_id for one in signed]
    with console.status(f"{ledgers} ledger(s): verifying {jobs} completions"):
        rig.start_ledgers(ledgers)
        try:
            rig.wait_verified(ids, timeout_s)
        finally:
            rig.stop_ledgers()
    credits, states = rig.credits(ids), rig.states(ids)
    once = all(n == 1 for n in credits.values()) and set(states.values()) == {JobState.COMPLETED}
    return steady_rate(rig.received_at(ids)), once


def _noop_rate(rig: LedgerRig, jobs: int, pool: str, concurrency: int, console: Console, timeout_s: float) -> float:
    with console.status(f"no-op baseline: {jobs} messages"):
        payloads = [one.model_dump(mode="json") for one in rig.completions(min(jobs, 50))]
        for i in range(jobs):
            rig.trusted.send_task(NOOP_TASK, args=[payloads[i % len(payloads)]], queue=NOOP_QUEUE)
        out = rig.net.root / "noop-stamps.json"
        name = "bench-noop"
        rig.net.spawn(name, heurist_cmd("bench", "worker", "noop", "--expect", str(jobs), "--out", str(out),
                                        "--pool", pool, "--concurrency", str(concurrency)), rig.net.trusted_env())
        try:
            wait_until(out.exists, timeout_s, "the no-op worker", check=rig.net.check_alive, interval=0.05)
        finally:
            stop_all([rig.net.supervisor.forget(name)])
        rig.purge(NOOP_QUEUE, delete=True)
    return steady_rate(json.loads(out.read_text()))


def run_noop_worker(broker_url: str, pool: str, concurrency: int, expect: int, out: Path) -> None:
    """The baseline: a bare Celery app (defaults) whose task does nothing; writes the start times of the first
    ``expect`` tasks to ``out`` (JSON), then keeps serving until stopped."""
    app = Celery("bench-noop", broker=broker_url, set_as_current=False)

    @app.task(name=NOOP_TASK)
    def noop(*args: Any, **kwargs: Any) -> None:
        return None

    stamps: list[float] = []
    lock = threading.Lock()

    def started(sender: Any = None, **_: Any) -> None:
        with lock:
            stamps.append(time.time())
            if len(stamps) == expect:
                partial = out.with_suffix(".tmp")
                partial.write_text(json.dumps(stamps))
                partial.rename(out)

    task_prerun.connect(started, weak=False)
    app.Worker(hostname=f"bench-noop@{time.time_ns()}", queues=[NOOP_QUEUE], pool=pool, concurrency=concurrency,
               loglevel="WARNING", quiet=True).start()


def run_ledger_bench(base: Settings, jobs: int, console: Console, timeout_s: float = 900.0, *,
                     inline: bool = True) -> LedgerBench:
    """Start storage (unless configured) on ``base``'s broker and database; measure the no-op worker, 1 ledger,
    then 2 ledger processes, each on its own N messages (outputs ``inline`` in them, else uploaded first); stop
    everything."""
    pool, concurrency = worker_pool(base.resolved_broker_url(), base.ledger_concurrency)
    with tempfile.TemporaryDirectory(prefix="heurist-ledger-bench-") as tmp:
        root = Path(tmp)
        base = base.model_copy(update={"catalog_path": bench_catalog(root)})
        with LedgerNetwork(root, base=base) as net:
            rig, settings = LedgerRig(net, LedgerRig.miners_for(jobs)), net.settings()
            try:
                before = rig.dead_letters()
                noop = _noop_rate(rig, jobs, pool, concurrency, console, timeout_s)
                one, once_1 = _ledger_rate(rig, jobs, 1, console, timeout_s, inline)
                two, once_2 = _ledger_rate(rig, jobs, 2, console, timeout_s, inline)
                dead = rig.dead_letters() - before
                rig.purge(f"{base.audit_queue_prefix}.{BENCH_MODEL}")  # the bench jobs' audit samples
            finally:
                rig.close()
    return LedgerBench(broker=settings.resolved_broker_url().split("://")[0],
                       database=settings.resolved_database_url().split("://")[0].split("+")[0], jobs=jobs,
                       outputs="inline" if inline else "uploaded",
                       miners=len(rig.miners), pool=pool, concurrency=concurrency, ledger_batch=base.ledger_batch,
                       noop_per_s=round(noop, 1), ledger_1_per_s=round(one, 1), ledger_2_per_s=round(two, 1),
                       ratio_1_vs_noop=round(one / noop, 3), ratio_2_vs_1=round(two / one, 3),
                       exactly_once=once_1 and once_2, dead_letters=dead)


def as_dict(result: LedgerBench) -> dict[str, object]:
    return asdict(result)


__all__ = ["LedgerBench", "as_dict", "run_ledger_bench", "run_noop_worker", "steady_rate"]
