"""``heurist exporter``: serve the network's Prometheus metrics (queues, jobs, latency, miners, points)."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import typer

from heurist.cli.common import console, err_console, redacted, settings_with

if TYPE_CHECKING:
    from heurist.monitoring.collector import NetworkCollector


def exporter(
    host: str | None = typer.Option(None, "--host", help="Interface to bind (default: HEURIST_EXPORTER_HOST, "
                                    "127.0.0.1; 0.0.0.0 for every one)."),
    port: int | None = typer.Option(None, "--port", min=0, max=65535,
                                    help="TCP port of /metrics (default: HEURIST_EXPORTER_PORT, 9108; 0: any free)."),
) -> None:
    """Serve Prometheus metrics read from the ledger database and the broker: queue depth per queue, jobs
    per model and state, latency histograms, active miners per tier, points, audits. Trusted: it needs the
    ledger's database URL, so run it beside the ledger. Scrape config: monitoring/prometheus.yml."""
    from heurist.monitoring.server import serve

    settings = settings_with(exporter_host=host, exporter_port=port)
    running = serve(settings, settings.exporter_host, settings.exporter_port)
    try:
        _first_reading(running.collector)
        console.print(f"exporter serving {running.url} (ledger {redacted(settings.resolved_database_url())}, "
                      f"broker {redacted(settings.resolved_broker_url())})", soft_wrap=True)
        threading.Event().wait()
    finally:
        running.close()


def _first_reading(collector: NetworkCollector) -> None:
    """Read once before announcing: history is folded into the histograms now, and a source that does not
    answer is named at start rather than only as ``heurist_exporter_source_up 0``."""
    for family in collector.collect():
        if family.name != "heurist_exporter_source_up":
            continue
        for sample in family.samples:
            if sample.value == 0:
                err_console.print(f"warning: the {sample.labels['source']} does not answer yet; "
                                  "its metrics are left out until it does (see the log)")
