"""`heurist bench latency`: submit to verified verdict for one job at a time, next to a bare Celery round trip.

Same network as `heurist bench path` (``bench_network``: the ledger, the null miner, the put worker), one job in
flight at a time, the two sides alternating sample by sample so a busy neighbour slows both alike:

- **job**: ``Client.submit`` of a null text job (record, presign, sign, confirmed publish), then
  ``Client.wait_all`` until the client sees the verdict: the miner's runtime, its signed completion (the 2 KB
  output inside it, stored by the ledger's PUT: ``heurist.ledger.inline``; ``HEURIST_MINER_INLINE_BYTES=0``: the
  miner's PUT) through its inbox, the ledger's verification and credit, and the notice (``heurist.verdicts``) or
  the poll that tells the client. Timed from before the submit to the verdict in hand.
- **bare**: a Celery task that does the same PUT (``heurist.bench.put``, presigned before the timer), sent with
  a link callback, timed until the callback's message arrives on a queue the bench reads: Celery's own
  round trip for a job with an output and nothing else.

p50 and p99 of each (nearest rank), and their ratios: the goal is a job p50 at most 2x the bare one.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

from celery.canvas import Signature
from rich.console import Console

from heurist.bench.path import BENCH_MODEL, DONE_QUEUE, DONE_TASK, PUT_QUEUE, PUT_TASK, bench_network
from heurist.client import Client, TextRequest
from heurist.errors import HeuristError
from heurist.jobs import JobState
from heurist.settings import Settings
from heurist.verdicts import notifies

WARMUP = 5


@dataclass(frozen=True)
class LatencyBench:
    broker: str
    database: str
    jobs: int
    output_bytes: int
    pushed_verdicts: bool  # the client learned verdicts from notices (RabbitMQ), not by polling
    bare_p50_ms: float
    bare_p99_ms: float
    job_p50_ms: float
    job_p99_ms: float
    ratio_p50: float  # job / bare; the goal is 2 or less
    ratio_p99: float


def percentile(samples: list[float], q: float) -> float:
    """The nearest-rank ``q`` percentile (0 < q <= 100) of non-empty ``samples``."""
    ordered = sorted(samples)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


class _Bare:
    """One PUT task at a time, done when its link callback's message arrives (one connection for the run)."""

    def __init__(self, client: Client, size: int) -> None:
        self.client, self.size = client, size
        self.link = Signature(DONE_TASK, app=client.app, queue=DONE_QUEUE)
        self.conn = client.app.connection_for_write()
        self.done = self.conn.SimpleQueue(DONE_QUEUE)

    def once(self) -> float:
        url = self.client.store.presign_put(f"bench/latency/{time.time_ns()}", 600)
        started = time.perf_counter()
        self.client.app.send_task(PUT_TASK, args=[url, self.size], queue=PUT_QUEUE, link=self.link)
        self.done.get(block=True, timeout=60).ack()
        return time.perf_counter() - started

    def close(self) -> None:
        self.done.close()
        self.conn.release()


def _job(client: Client) -> float:
    started = time.perf_counter()
    handle = client.submit(TextRequest("bench", BENCH_MODEL, max_tokens=1))
    [view] = client.wait_all([handle.id], 60)
    elapsed = time.perf_counter() - started
    if view.state is not JobState.COMPLETED:
        raise HeuristError(f"bench job {view.job_id} ended {view.state.value}: {view.error}")
    return elapsed


def run_latency_bench(base: Settings, jobs: int, size: int, console: Console) -> LatencyBench:
    """Start the bench network on ``base``'s services; time ``jobs`` of each side, alternating; stop all."""
    with bench_network(base, size, console) as (settings, client):
        bare = _Bare(client, size)
        try:
            with console.status(f"latency: {jobs} null jobs and {jobs} bare round trips, one at a time"):
                for _ in range(WARMUP):
                    bare.once()
                    _job(client)
                bare_s, job_s = [], []
                for _ in range(jobs):
                    bare_s.append(bare.once())
                    job_s.append(_job(client))
        finally:
            bare.close()
    bare_p50, bare_p99, job_p50, job_p99 = (round(percentile(samples, q) * 1e3, 1)
                                            for samples in (bare_s, job_s) for q in (50, 99))
    return LatencyBench(broker=settings.resolved_broker_url().split("://")[0],
                        database=settings.resolved_database_url().split("://")[0], jobs=jobs, output_bytes=size,
                        pushed_verdicts=notifies(settings), bare_p50_ms=bare_p50, bare_p99_ms=bare_p99,
                        job_p50_ms=job_p50, job_p99_ms=job_p99, ratio_p50=round(job_p50 / bare_p50, 2),
                        ratio_p99=round(job_p99 / bare_p99, 2))


def as_dict(result: LatencyBench) -> dict[str, object]:
    return asdict(result)
