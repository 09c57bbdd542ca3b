"""Job latency histograms per model, fed incrementally so a scrape costs the same on a big ledger.

Two durations per verified job (state completed or late): *latency*, what the application waited
(``jobs.finished_at - jobs.created_at``, both the trusted side's clock), and *compute*, the miner's claimed
``timings.run_s`` from its signed completion (a claim, checked for plausibility by the audit).

The first scrape folds all history into the buckets with one aggregate query (no row per job crosses the
wire); later scrapes read only jobs finished after a watermark. The watermark trails the newest finish
seen by ``LOOKBACK_S`` and the ids seen since are remembered, so a transaction that commits a little after
a newer one is still counted, and nothing is counted twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, and_, case, func, select
from sqlalchemy.orm import Session

from heurist.jobs import JobState
from heurist.ledger.tables import CompletionRow, Job
from heurist.monitoring.increments import LOOKBACK_S

BUCKETS: tuple[float, ...] = (0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
VERIFIED = (JobState.COMPLETED, JobState.LATE)


@dataclass
class Histogram:
    """Per-bucket counts (not cumulative; the last is +Inf) and the sum of observed values."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    total: float = 0.0

    def observe(self, value: float) -> None:
        index = next((i for i, bound in enumerate(BUCKETS) if value <= bound), len(BUCKETS))
        self.counts[index] += 1
        self.total += value

    def add(self, counts: Sequence[int], total: float) -> None:
        self.counts = [a + b for a, b in zip(self.counts, counts, strict=True)]
        self.total += total

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, float]]:
        """Buckets as Prometheus wants them: (upper bound, cumulative count), ending with +Inf."""
        running, out = 0, []
        for bound, n in zip([*map(str, BUCKETS), "+Inf"], self.counts, strict=True):
            running += n
            out.append((bound, float(running)))
        return out


def _bucket_sums(value: ColumnElement[Any]) -> list[ColumnElement[Any]]:
    """SQL for per-bucket (non-cumulative) counts of ``value``: one SUM(CASE ...) per bucket."""
    sums: list[ColumnElement[Any]] = []
    lower = None
    for bound in (*BUCKETS, None):
        conds = [c for c in (None if lower is None else value > lower, None if bound is None else value <= bound)
                 if c is not None]
        sums.append(func.sum(case((and_(*conds), 1), else_=0)))
        lower = bound
    return sums


class LatencyHistograms:
    """``latency`` and ``compute`` histograms per model, updated by ``update`` (call it under a lock)."""

    def __init__(self, lookback_s: float = LOOKBACK_S) -> None:
        self.lookback_s = lookback_s
        self.latency: dict[str, Histogram] = {}
        self.compute: dict[str, Histogram] = {}
        self.watermark: float | None = None  # every verified job finished at or before it is counted
        self._seen: dict[str, float] = {}  # job id -> finished_at, for jobs after the watermark

    def update(self, session: Session) -> None:
        if self.watermark is None:
            self._bootstrap(session)
        latency = Job.finished_at - Job.created_at
        run_s = CompletionRow.timings["run_s"].as_float()
        rows = session.execute(
            select(Job.id, Job.model_id, Job.finished_at, latency, run_s)
            .join(CompletionRow, CompletionRow.job_id == Job.id)
            .where(Job.state.in_(VERIFIED), Job.finished_at > self.watermark)
        ).all()
        self._observe(rows)

    def _observe(self, rows: Iterable[Any]) -> None:
        newest = self.watermark
        for job_id, model, finished_at, latency, run_s in rows:
            newest = finished_at if newest is None else max(newest, finished_at)
            if job_id in self._seen:
                continue
            self._seen[job_id] = finished_at
            self.latency.setdefault(model, Histogram()).observe(max(0.0, latency))
            if run_s is not None:
                self.compute.setdefault(model, Histogram()).observe(max(0.0, run_s))
        if newest is not None and self.watermark is not None:
            self.watermark = max(self.watermark, newest - self.lookback_s)
            self._seen = {j: f for j, f in self._seen.items() if f > self.watermark}

    def _bootstrap(self, session: Session) -> None:
        """Fold every verified job finished before (newest - lookback) into the buckets, aggregated in SQL."""
        newest = session.scalar(select(func.max(Job.finished_at)).where(Job.state.in_(VERIFIED)))
        self.watermark = (newest - self.lookback_s) if newest is not None else float("-inf")
        if newest is None:
            return
        measures: tuple[tuple[ColumnElement[Any], dict[str, Histogram]], ...] = (
            (Job.finished_at - Job.created_at, self.latency),
            (CompletionRow.timings["run_s"].as_float(), self.compute),
        )
        for value, target in measures:
            stmt = (select(Job.model_id, func.coalesce(func.sum(value), 0.0), *_bucket_sums(value))
                    .join(CompletionRow, CompletionRow.job_id == Job.id)
                    .where(Job.state.in_(VERIFIED), Job.finished_at <= self.watermark, value.is_not(None))
                    .group_by(Job.model_id))
            for row in session.execute(stmt):
                values: list[Any] = list(row)
                model, total, counts = values[0], values[1], values[2:]
                target.setdefault(str(model), Histogram()).add([int(c or 0) for c in counts], float(total or 0))
