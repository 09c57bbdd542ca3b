"""The ledger process's own ``/metrics``: retries, outages and dead letters, which no database row records.

``heurist exporter`` counts what the ledger wrote; it cannot see what the ledger could not write. While the
database is down, the completions waiting for it exist only in the ledger process (``heurist.transient``), so
that process serves them itself: ``Settings.ledger_metrics_port`` (0: off, the default, so several ledgers on
one host or in one test run never fight over a port; ``monitoring/prometheus.yml`` scrapes 9109), bound on
``ledger_metrics_host``, started and stopped with the worker by a bootstep. A busy port stops the ledger at
start with an error naming the setting. Each scrape reads ``Outages.views`` under its lock: microseconds.

The families (``LEDGER_METRICS``), each per ``source`` (``database``, ``storage``) unless said otherwise:

- ``heurist_ledger_retrying_messages``: messages waiting for a retry now;
- ``heurist_ledger_outage_seconds``: how long messages have been failing on it (0 when none is);
- ``heurist_ledger_retries_max``: the most retries of one waiting message;
- ``heurist_ledger_outage_alert``: 1 once that has lasted ``ledger_outage_alert_s``, when the ERROR was logged;
- ``heurist_ledger_transient_retries_total`` (per source and task), ``heurist_ledger_dead_lettered_total`` (per
  task): since the process started.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Iterator
from typing import Any

from celery import Celery, bootsteps
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from heurist.errors import ConfigError
from heurist.settings import Settings
from heurist.transient import Outages

log = logging.getLogger(__name__)

LEDGER_METRICS: dict[str, tuple[str, str]] = {
    "heurist_ledger_retrying_messages": ("gauge", "Ledger messages waiting for a retry after a database or storage "
                                         "error, per source."),
    "heurist_ledger_outage_seconds": ("gauge", "How long ledger messages have been failing on the source (0: none "
                                      "is now)."),
    "heurist_ledger_retries_max": ("gauge", "The most retries of one ledger message still waiting, per source."),
    "heurist_ledger_outage_alert": ("gauge", "1 once messages have failed on the source for "
                                    "HEURIST_LEDGER_OUTAGE_ALERT_S (the ledger logged an ERROR)."),
    "heurist_ledger_transient_retries": ("counter", "Retries of ledger messages after a transient error, per source "
                                         "and task, since the process started."),
    "heurist_ledger_dead_lettered": ("counter", "Ledger messages a task could not process, kept in dead-letters, "
                                     "per task."),
}


class LedgerCollector(Collector):
    """Reads the ledger process's ``Outages`` on each scrape."""

    def __init__(self, outages: Outages) -> None:
        self.outages = outages

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        gauges = {name: GaugeMetricFamily(name, help_, labels=["source"]) for name, (kind, help_)
                  in LEDGER_METRICS.items() if kind == "gauge"}
        for view in self.outages.views():
            gauges["heurist_ledger_retrying_messages"].add_metric([view.source], view.waiting)
            gauges["heurist_ledger_outage_seconds"].add_metric([view.source], view.seconds)
            gauges["heurist_ledger_retries_max"].add_metric([view.source], view.most_retries)
            gauges["heurist_ledger_outage_alert"].add_metric([view.source], int(view.alerting))
        yield from gauges.values()
        retries = CounterMetricFamily("heurist_ledger_transient_retries",
                                      LEDGER_METRICS["heurist_ledger_transient_retries"][1], labels=["source", "task"])
        for (source, task), count in sorted(self.outages.retries.copy().items()):
            retries.add_metric([source, task], count)
        kept = CounterMetricFamily("heurist_ledger_dead_lettered", LEDGER_METRICS["heurist_ledger_dead_lettered"][1],
                                   labels=["task"])
        for task, count in sorted(self.outages.dead_lettered.copy().items()):
            kept.add_metric([task], count)
        yield retries
        yield kept


class LedgerMetricsServer:
    """The HTTP server of one ledger process: ``start`` binds (a ConfigError names the setting), ``stop`` closes."""

    def __init__(self, outages: Outages, host: str, port: int) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(LedgerCollector(outages))
        self.host, self.port = host, port
        self._server: Any = None

    def start(self) -> None:
        try:
            self._server, _ = start_http_server(self.port, addr=self.host, registry=self.registry)
        except OSError as err:
            what = "already in use" if err.errno == errno.EADDRINUSE else f"unusable ({err.strerror})"
            raise ConfigError(f"the ledger's metrics port {self.host}:{self.port} is {what}: choose another with "
                              "HEURIST_LEDGER_METRICS_PORT (0: off)") from None
        log.info("ledger metrics on http://%s:%d/metrics", self.host, self.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def serve_ledger_metrics(app: Celery, settings: Settings, outages: Outages) -> LedgerMetricsServer | None:
    """With ``ledger_metrics_port`` set, serve ``outages`` while ``app``'s worker runs (a bootstep)."""
    if not settings.ledger_metrics_port:
        return None
    server = LedgerMetricsServer(outages, settings.ledger_metrics_host, settings.ledger_metrics_port)
    server.start()  # here, not in the step: a busy port stops the ledger before it consumes anything

    class LedgerMetricsStep(bootsteps.StartStopStep):
        """Closes the endpoint when the worker stops."""

        label = "ledger metrics"

        def create(self, parent: Any) -> LedgerMetricsServer:
            return server

        def start(self, parent: Any) -> None:
            """Already serving since ``serve_ledger_metrics``."""

    app.steps["worker"].add(LedgerMetricsStep)
    return server


__all__ = ["LEDGER_METRICS", "LedgerCollector", "LedgerMetricsServer", "serve_ledger_metrics"]
