"""Run the trusted ledger consumer on the ``ledger`` queue."""

from __future__ import annotations

import socket

from heurist.audit import AuditSampler
from heurist.audit.middleware import AuditSampling, MetricsFlagging
from heurist.catalog import Catalog
from heurist.celery_app import create_app, run_worker, worker_pool
from heurist.ledger.audit_service import AuditLedger
from heurist.ledger.factory import open_ledger, open_uptime
from heurist.ledger.redispatch import Redispatch
from heurist.services import Services
from heurist.settings import Settings
from heurist.storage import make_store
from tasks.ledger import register_ledger_tasks


def run_ledger(settings: Settings, catalog: Catalog, concurrency: int = 2, loglevel: str = "INFO") -> None:
    """Verify completions and credit points until stopped. Threads on AMQP: the work is I/O (S3 HEAD, DB)."""
    store = make_store(settings)
    store.ensure_bucket()
    ledger = open_ledger(settings, catalog, store)
    app = create_app(settings, Services("ledger", ledger=ledger, uptime=open_uptime(settings, ledger)))
    register_ledger_tasks(app)
    sampler = AuditSampler(base_rate=settings.audit_base_rate, new_miner_rate=settings.audit_new_miner_rate,
                           suspicious_rate=settings.audit_suspicious_rate, seed=settings.audit_seed)
    ledger.middleware += [
        MetricsFlagging(AuditLedger(ledger.engine)),  # first: a flag raises this very job's sampling rate
        AuditSampling(app, sampler, settings.audit_queue_prefix),
        Redispatch(app, settings),
    ]
    pool, concurrency = worker_pool(settings.resolved_broker_url(), concurrency)
    worker = app.Worker(hostname=f"ledger@{socket.gethostname()}", queues=[settings.ledger_queue],
                        pool=pool, concurrency=concurrency, loglevel=loglevel, quiet=True)
    run_worker(worker, "ledger")
