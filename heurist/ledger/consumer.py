"""Run the trusted ledger consumer on the ``ledger`` queue.

The audit's middleware comes from the caller (``heurist ledger`` passes ``heurist.audit.middleware
.audit_middleware``): the audit package builds on the ledger, so the ledger never imports it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from celery import Celery

from heurist.catalog import Catalog
from heurist.celery_app import create_app, only_tasks, run_worker, worker_pool
from heurist.deadletters.consumer import keep_poison
from heurist.ledger.factory import open_ledger, open_uptime
from heurist.ledger.middleware import LedgerMiddleware
from heurist.ledger.miner_events import MinerEvents, MonitoredUptime
from heurist.ledger.redispatch import Redispatch, ResendOnReport
from heurist.ledger.service import Ledger
from heurist.ledger.sweep import install_sweep
from heurist.monitoring.ledger_metrics import serve_ledger_metrics
from heurist.outbox import install_relay
from heurist.reconnect import node_name
from heurist.services import Services
from heurist.settings import Settings, is_amqp
from heurist.storage.backends.s3_fast import FastS3ObjectStore
from heurist.transient import install_transient
from heurist.verdicts.publisher import install_verdicts
from tasks.ledger import register_ledger_tasks
from tasks.names import LEDGER_TASKS

# Builds the middleware that runs after each verdict, before the ledger's own (redispatch).
MiddlewareFactory = Callable[[Celery, Settings, Ledger], Sequence[LedgerMiddleware]]


def run_ledger(settings: Settings, catalog: Catalog, middleware: MiddlewareFactory, concurrency: int | None = None,
               loglevel: str = "INFO") -> None:
    """Verify completions and credit points until stopped. Threads on AMQP (``concurrency``, default
    ``settings.ledger_concurrency``), whose completions are verified in batches (``heurist.ledger.batch``)."""
    store = FastS3ObjectStore.from_settings(settings)  # its per-completion reads skip boto3 (heurist.storage)
    store.ensure_bucket()
    ledger = open_ledger(settings, catalog, store)
    app = create_app(settings, Services("ledger", ledger=ledger))
    # Miners send no events of their own: Flower sees them through the ledger's verified heartbeats.
    events = MinerEvents(app, settings.heartbeat_interval_s)
    app.services.uptime = MonitoredUptime(open_uptime(settings, ledger), events)
    app.conf.heurist_ledger_queue = settings.ledger_queue  # where retries go (heurist.access.senders.InboxTask)
    register_ledger_tasks(app)
    only_tasks(app, LEDGER_TASKS)  # a miner may publish here: Celery's built-ins (celery.group) are refused
    keep_poison(app, settings)  # malformed, oversized, undecodable or unknown messages go to dead-letters
    transient = install_transient(app, settings)  # outages retried without limit, the rest kept (heurist.transient)
    serve_ledger_metrics(app, settings, transient.outages)  # its /metrics, with ledger_metrics_port set
    sweep = install_sweep(app, settings, ledger)  # stranded jobs (purged, lost, never taken): re-sent, then failed
    ledger.outbox = install_relay(app, ledger.engine, settings.outbox_interval_s)  # audit samples, after a crash too
    ledger.middleware += [*middleware(app, settings, ledger), Redispatch(app, settings), ResendOnReport(sweep)]
    install_verdicts(app, settings, ledger)  # clients hear of their verdicts on the broker (heurist.verdicts)
    if is_amqp(settings.resolved_broker_url()):  # miners send through their inboxes (heurist.ledger.inboxes)
        from heurist.access.backends.rabbitmq import RabbitMQAccess
        from heurist.ledger.inboxes import watch_inboxes

        watch_inboxes(app, RabbitMQAccess.from_settings(settings), settings.inbox_poll_s)
    pool, concurrency = worker_pool(settings.resolved_broker_url(), concurrency or settings.ledger_concurrency)
    if concurrency > 1:  # threads waiting together: their reads and credits are batched (heurist.ledger.batch)
        ledger.batch(settings.ledger_batch, settings.ledger_batch_window_ms / 1000)
    worker = app.Worker(hostname=node_name("ledger"), queues=[settings.ledger_queue],
                        pool=pool, concurrency=concurrency, loglevel=loglevel, quiet=True)
    run_worker(worker, "ledger")
