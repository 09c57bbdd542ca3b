"""The exporter's Prometheus collector: on each scrape, read the ledger and the broker, emit families.

A custom collector (``collect`` runs per scrape) rather than counters bumped by the services: the ledger
database already holds every count, so there is nothing to instrument in the ledger, miners or clients,
numbers survive exporter restarts, and several ledger processes need no shared metrics state. A source
that does not answer (database or broker down) is reported as ``heurist_exporter_source_up 0`` and its
families are left out, so the rest of the scrape still arrives.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine

from heurist.catalog import Catalog
from heurist.db.engine import session_scope
from heurist.jobs import JobState
from heurist.ledger.tables import AuditOutcome
from heurist.monitoring.latency import Histogram, LatencyHistograms
from heurist.monitoring.ledger_stats import LedgerStats, LedgerStatsReader
from heurist.monitoring.queues import QueueDepths, WatchedQueue

log = logging.getLogger(__name__)

TERMINAL_STATES = tuple(s.value for s in JobState if s.terminal)

# Every family the exporter emits: name -> (type, help). The tests check the scrape and the Grafana
# dashboard against this table, so renaming a metric here without the dashboard fails them.
METRICS: dict[str, tuple[str, str]] = {
    "heurist_queue_messages": ("gauge", "Messages waiting (ready, not yet taken by a worker) per broker queue."),
    "heurist_jobs_submitted": ("counter", "Jobs recorded by clients and the gateway, per model."),
    "heurist_jobs_finished": ("counter", "Jobs that reached a terminal state, per model and state."),
    "heurist_jobs_queued": ("gauge", "Jobs recorded but not finished yet (waiting or running), per model."),
    "heurist_job_latency_seconds": ("histogram", "Submission to verified completion (trusted clocks), per model."),
    "heurist_job_compute_seconds": ("histogram", "The miner's claimed run time of a verified job, per model."),
    "heurist_points_issued": ("counter", "Points credited for verified jobs (available or in escrow), per model."),
    "heurist_points_clawed_back": ("counter", "Points taken back after failed audits, per model."),
    "heurist_points_escrowed": ("gauge", "Points held in escrow now, network-wide."),
    "heurist_audits": ("counter", "Audit verdicts per model and outcome."),
    "heurist_rejections": ("counter", "Completions refused by the ledger, per reason."),
    "heurist_job_resends": ("counter", "Stranded jobs (queued past their deadline: lost, purged or never taken) "
                            "the ledger's sweep sent again, per model."),
    "heurist_miners_registered": ("gauge", "Miners that ever proved their key (signed hello)."),
    "heurist_miners_active": ("gauge", "Miners seen within the offline threshold, per tier (largest class served)."),
    "heurist_miners_banned": ("gauge", "Miners banned now (their latest ban/unban event is a ban)."),
    "heurist_miners_flagged": ("gauge", "Miners flagged for implausible metrics now."),
    "heurist_exporter_source_up": ("gauge", "1 if the source (ledger, broker) answered this scrape, else 0."),
    "heurist_exporter_collect_seconds": ("gauge", "Time this scrape spent reading the ledger and the broker."),
}


def _gauge(name: str, labels: list[str] | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, METRICS[name][1], labels=labels)


def _counter(name: str, labels: list[str] | None = None) -> CounterMetricFamily:
    return CounterMetricFamily(name, METRICS[name][1], labels=labels)


class NetworkCollector(Collector):
    """Reads the ledger (``engine``) and queue depths (``depths``) per scrape; one scrape at a time."""

    def __init__(self, catalog: Catalog, engine: Engine, depths: QueueDepths, queues: list[WatchedQueue],
                 offline_after_s: float, clock: Callable[[], float] = time.time) -> None:
        self.catalog, self.engine, self.depths, self.queues = catalog, engine, depths, queues
        self.offline_after_s, self.clock = offline_after_s, clock
        self.stats = LedgerStatsReader(catalog)
        self.latency = LatencyHistograms()
        self._lock = threading.Lock()

    def describe(self) -> list[Metric]:
        """Nothing up front: registering must not query the ledger (families are listed in ``METRICS``)."""
        return []

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            started = time.perf_counter()
            up = _gauge("heurist_exporter_source_up", ["source"])
            families: list[Metric] = []
            for source, read in (("ledger", self._ledger_families), ("broker", self._queue_families)):
                try:
                    families.extend(read())
                    up.add_metric([source], 1)
                except Exception as err:  # a source down must not fail the whole scrape
                    log.warning("exporter: reading the %s failed: %s", source, err)
                    up.add_metric([source], 0)
            elapsed = _gauge("heurist_exporter_collect_seconds")
            elapsed.add_metric([], time.perf_counter() - started)
        yield from families
        yield up
        yield elapsed

    def _ledger_families(self) -> list[Metric]:
        with session_scope(self.engine) as session:
            stats = self.stats.read(session, self.clock() - self.offline_after_s)
            self.latency.update(session)
        return [*self._job_families(stats), *self._latency_families(), *self._points_families(stats),
                *self._miner_families(stats)]

    def _models(self, *seen: dict[Any, Any]) -> list[str]:
        """Catalog models plus any the ledger still holds jobs of: every model gets its zero series."""
        extra = {key[0] if isinstance(key, tuple) else key for table in seen for key in table}
        return sorted(set(self.catalog) | (extra - {""}))

    def _job_families(self, stats: LedgerStats) -> list[Metric]:
        submitted = _counter("heurist_jobs_submitted", ["model"])
        finished = _counter("heurist_jobs_finished", ["model", "state"])
        queued = _gauge("heurist_jobs_queued", ["model"])
        audits = _counter("heurist_audits", ["model", "outcome"])
        for model in self._models(stats.jobs, stats.audits):
            submitted.add_metric([model], sum(n for (m, _), n in stats.jobs.items() if m == model))
            queued.add_metric([model], stats.jobs.get((model, JobState.QUEUED.value), 0))
            for state in TERMINAL_STATES:
                finished.add_metric([model, state], stats.jobs.get((model, state), 0))
            for outcome in AuditOutcome:
                audits.add_metric([model, outcome.value], stats.audits.get((model, outcome.value), 0))
        rejections = _counter("heurist_rejections", ["reason"])
        for reason, count in sorted(stats.rejections.items()):
            rejections.add_metric([reason], count)
        resends = _counter("heurist_job_resends", ["model"])
        for model in self._models(stats.resends):
            resends.add_metric([model], stats.resends.get(model, 0))
        return [submitted, finished, queued, audits, rejections, resends]

    def _latency_families(self) -> list[Metric]:
        out: list[Metric] = []
        for name, table in (("heurist_job_latency_seconds", self.latency.latency),
                            ("heurist_job_compute_seconds", self.latency.compute)):
            family = HistogramMetricFamily(name, METRICS[name][1], labels=["model"])
            for model in self._models(table):
                hist = table.get(model) or Histogram()
                family.add_metric([model], buckets=hist.cumulative(), sum_value=hist.total)
            out.append(family)
        return out

    def _points_families(self, stats: LedgerStats) -> list[Metric]:
        issued = _counter("heurist_points_issued", ["model"])
        clawed = _counter("heurist_points_clawed_back", ["model"])
        for model in self._models(stats.points_issued, stats.points_clawed_back):
            issued.add_metric([model], stats.points_issued.get(model, 0.0))
            clawed.add_metric([model], stats.points_clawed_back.get(model, 0.0))
        escrowed = _gauge("heurist_points_escrowed")
        escrowed.add_metric([], stats.points_escrowed)
        return [issued, clawed, escrowed]

    def _miner_families(self, stats: LedgerStats) -> list[Metric]:
        active = _gauge("heurist_miners_active", ["tier"])
        for tier, count in stats.miners_active.items():
            active.add_metric([tier], count)
        out: list[Metric] = [active]
        for name, value in (("heurist_miners_registered", stats.miners_registered),
                            ("heurist_miners_banned", stats.miners_banned),
                            ("heurist_miners_flagged", stats.miners_flagged)):
            gauge = _gauge(name)
            gauge.add_metric([], value)
            out.append(gauge)
        return out

    def _queue_families(self) -> list[Metric]:
        depths = self.depths.read([q.name for q in self.queues])
        family = _gauge("heurist_queue_messages", ["queue", "role", "model", "tier"])
        for q in self.queues:
            family.add_metric([q.name, q.role, q.model, q.tier], depths[q.name])
        return [family]
