"""`heurist bench load`: several thousand small jobs through 2 miners and 2 ledger processes, and proof that every
job ended exactly once.

The jobs are null jobs (``heurist.bench.path``'s model, which answers at once), so what is loaded is the network
itself: the client's record and publish (with publisher confirms), the broker, the miners' runtime, S3 PUTs, and
the ledgers' verification and credit, two ledger processes consuming one queue. Latency is submit to verified
verdict, per job, from the ledger's own rows (``jobs.created_at`` to ``jobs.finished_at``, one machine's clock);
throughput is jobs over the span from the first submit to the last verdict.

"Exactly once" is read back from the database, not inferred: every job COMPLETED, each with exactly one points
entry and one stored completion; redeliveries the ledger refused as duplicates, and re-sends by the stranded-job
sweep, are counted, not hidden. The run fails (exit 1) if any job is lost or credited twice.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from sqlalchemy import Engine, func, select

from heurist.bench.path import BENCH_MODEL, bench_catalog
from heurist.client import Client, TextRequest
from heurist.db.engine import session_scope
from heurist.embedded import EmbeddedNetwork, heurist_cmd, wait_until
from heurist.jobs import JobState
from heurist.ledger.tables import CompletionRow, Job, PointsEntry, Reason, Rejection
from heurist.settings import Settings


@dataclass(frozen=True)
class LoadBench:
    broker: str
    database: str
    jobs: int
    miners: int
    ledgers: int
    seconds: float  # first submit to last verified verdict
    submit_per_s: float
    jobs_per_s: float
    p50_s: float
    p99_s: float
    completed: int
    not_completed: int  # lost (still queued) or failed: 0 in a healthy run
    credited_once: int
    credited_twice: int  # jobs with more than one points entry: always 0
    stored_completions: int  # one per job (its primary key)
    duplicate_deliveries: int  # completions delivered again and refused as duplicates (redeliveries)
    resends: int  # jobs the stranded-job sweep had to send again

    @property
    def exactly_once(self) -> bool:
        return self.completed == self.credited_once == self.stored_completions == self.jobs \
            and self.credited_twice == 0


@dataclass(frozen=True)
class _Rows:
    states: dict[str, JobState]
    latencies: list[float]
    span_s: float
    entries: dict[str, int]
    completions: int
    duplicates: int
    resends: int


def _read(engine: Engine, job_ids: list[str]) -> _Rows:
    """What the ledger recorded for ``job_ids`` (in chunks: IN lists stay short)."""
    states: dict[str, JobState] = {}
    entries: dict[str, int] = {}
    latencies: list[float] = []
    first, last, completions, duplicates, resends = float("inf"), 0.0, 0, 0, 0
    with session_scope(engine) as session:
        for start in range(0, len(job_ids), 500):
            chunk = job_ids[start:start + 500]
            for job_id, state, created, finished, sent_again in session.execute(
                    select(Job.id, Job.state, Job.created_at, Job.finished_at, Job.resends).where(Job.id.in_(chunk))):
                states[job_id] = state
                resends += sent_again
                first = min(first, created)
                if finished is not None:
                    latencies.append(finished - created)
                    last = max(last, finished)
            entries.update((str(job_id), int(n)) for job_id, n in session.execute(
                select(PointsEntry.job_id, func.count()).where(PointsEntry.job_id.in_(chunk))
                .group_by(PointsEntry.job_id)))
            completions += int(session.scalar(select(func.count()).select_from(CompletionRow)
                                              .where(CompletionRow.job_id.in_(chunk))) or 0)
            duplicates += int(session.scalar(select(func.count()).select_from(Rejection).where(
                Rejection.job_id.in_(chunk), Rejection.reason == Reason.DUPLICATE)) or 0)
    return _Rows(states, sorted(latencies), max(last - first, 1e-9), entries, completions, duplicates, resends)


def _percentile(values: list[float], q: int) -> float:
    """The ``q``-th percentile (1..99) of sorted ``values``, interpolated."""
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def _submit(client: Client, jobs: int, console: Console) -> tuple[list[str], float]:
    request = TextRequest("load", BENCH_MODEL, max_tokens=1)
    with _bar(console) as bar:
        task = bar.add_task("submitting", total=jobs)
        started = time.perf_counter()
        ids = []
        for _ in range(jobs):
            ids.append(client.submit(request).id)
            bar.advance(task)
        elapsed = time.perf_counter() - started
    return ids, elapsed


def _bar(console: Console) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console)


def _start(net: EmbeddedNetwork, miners: int, ledgers: int) -> list[str]:
    """The extra ledgers (the network started one) and the null miners, each miner on its own broker user."""
    for i in range(1, ledgers):
        net.spawn(f"ledger{i}", heurist_cmd("ledger", "--loglevel", "WARNING"), net.trusted_env())
    addresses = []
    for i in range(miners):
        wallet, key_file = net.new_key_file(f"load-miner{i}")
        net.spawn(f"load-miner{i}", heurist_cmd("bench", "worker", "miner", "--key-file", str(key_file)),
                  net.miner_env(net.own_broker_url(wallet.address)))
        addresses.append(wallet.address)
    return addresses


def run_load_bench(base: Settings, jobs: int, miners: int, ledgers: int, console: Console,
                   timeout_s: float = 1800.0) -> LoadBench:
    """Start the network on ``base``'s broker and database, submit ``jobs`` null jobs, wait, read back."""
    with tempfile.TemporaryDirectory(prefix="heurist-load-") as tmp:
        root = Path(tmp)
        base = base.model_copy(update={"catalog_path": bench_catalog(root)})
        with EmbeddedNetwork(root, base=base) as net:
            addresses = _start(net, miners, ledgers)
            settings = net.settings()
            with Client(settings) as client:
                with console.status(f"starting {ledgers} ledgers and {miners} null miners"):
                    for address in addresses:
                        wait_until(lambda a=address: client.ledger.is_registered(a), 180, "a bench miner",
                                   check=net.check_alive)
                ids, submit_s = _submit(client, jobs, console)
                with _bar(console) as bar:
                    task = bar.add_task("verified", total=jobs)
                    client.wait_all(ids, timeout_s, on_progress=lambda done, _: bar.update(task, completed=done))
                net.check_alive()
                rows = _read(client.ledger.engine, ids)
    done = sum(state is JobState.COMPLETED for state in rows.states.values())
    return LoadBench(broker=settings.resolved_broker_url().split("://")[0],
                     database=settings.resolved_database_url().split("://")[0].split("+")[0], jobs=jobs,
                     miners=miners, ledgers=ledgers, seconds=round(rows.span_s, 2),
                     submit_per_s=round(jobs / submit_s, 1), jobs_per_s=round(jobs / rows.span_s, 1),
                     p50_s=round(_percentile(rows.latencies, 50), 4), p99_s=round(_percentile(rows.latencies, 99), 4),
                     completed=done, not_completed=jobs - done,
                     credited_once=sum(n == 1 for n in rows.entries.values()),
                     credited_twice=sum(n > 1 for n in rows.entries.values()), stored_completions=rows.completions,
                     duplicate_deliveries=rows.duplicates, resends=rows.resends)


def as_dict(result: LoadBench) -> dict[str, object]:
    return {**asdict(result), "exactly_once": result.exactly_once}
