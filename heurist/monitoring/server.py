"""Serve the network's metrics on ``/metrics`` with prometheus_client's HTTP server."""

from __future__ import annotations

import errno
from dataclasses import dataclass
from threading import Thread
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server

from heurist.catalog import Catalog, load_catalog
from heurist.db import open_engine
from heurist.errors import ConfigError
from heurist.monitoring.collector import NetworkCollector
from heurist.monitoring.queues import QueueDepths, watched_queues
from heurist.settings import Settings


def build_collector(settings: Settings, catalog: Catalog | None = None) -> NetworkCollector:
    """A collector on the settings' ledger database and broker (trusted URLs: run it beside the ledger)."""
    catalog = catalog or load_catalog(settings.catalog_path)
    engine = open_engine(settings, migrate=False)  # only reads: the ledger's processes migrate
    depths = QueueDepths(settings.resolved_broker_url())
    queues = watched_queues(catalog, settings.ledger_queue, settings.audit_queue_prefix)
    return NetworkCollector(catalog, engine, depths, queues, settings.offline_after_s())


@dataclass
class Exporter:
    """A running exporter: ``url`` to scrape, ``close()`` to stop it."""

    server: Any
    thread: Thread
    collector: NetworkCollector
    url: str

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)
        self.collector.depths.close()
        self.collector.engine.dispose()


def serve(settings: Settings, host: str, port: int) -> Exporter:
    """Start serving in a background thread; a busy port is a ConfigError naming ``--port``."""
    registry = CollectorRegistry()
    collector = build_collector(settings)
    registry.register(collector)
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as err:
        collector.engine.dispose()
        if err.errno == errno.EADDRINUSE:
            raise ConfigError(f"port {port} on {host} is already in use: choose another with --port "
                              "(or HEURIST_EXPORTER_PORT)") from None
        raise ConfigError(f"cannot listen on {host}:{port} ({err.strerror}): check --host and --port") from None
    bound = server.server_address[1]
    shown = f"[{host}]" if ":" in host else host
    return Exporter(server, thread, collector, f"http://{shown}:{bound}/metrics")
