"""Build the Celery app for a role from the one settings object."""

from __future__ import annotations

import gc
from collections.abc import Collection
from typing import Any

from celery import Celery
from celery.signals import worker_shutting_down
from celery.utils.objects import FallbackContext
from kombu.utils.imports import symbol_by_name

from heurist import broker
from heurist.confirms import ConfirmedProducers, confirm_options, publish_policy, send_confirmed
from heurist.errors import HeuristError
from heurist.liveness import install_liveness
from heurist.reconnect import Consumer as ReconnectingConsumer
from heurist.services import Services
from heurist.settings import Settings, is_amqp
from heurist.signal_wakeup import WakeOnSignal
from heurist.unlinked import UnlinkedTask


class HeuristCelery(Celery):
    """A Celery app that carries its role's ``Services``, so tasks reach them typed, without globals.

    On AMQP every ``send_task`` waits for the broker's confirm, bounded, and is retried on a new connection;
    one the broker never confirmed raises ``BrokerUnavailableError`` (``heurist.confirms``)."""

    def __init__(self, services: Services, settings: Settings | None = None, **kwargs: Any) -> None:
        super().__init__("heurist", **kwargs)
        self.services = services
        self.settings = settings or Settings(_env_file=None)  # type: ignore[call-arg]
        self.confirms = is_amqp(self.settings.resolved_broker_url())
        options = confirm_options(self.settings)
        self._confirmed = ConfirmedProducers(lambda: self.connection_for_write(transport_options=options),
                                             limit=10) if self.confirms else None

    def send_task(self, name: str, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        if self._confirmed is None:
            return super().send_task(name, args, kwargs, **options)
        options.setdefault("confirm_timeout", self.settings.broker_confirm_timeout_s)
        return send_confirmed(lambda: super(HeuristCelery, self).send_task(name, args, kwargs, **options), name,
                              options, self.settings, lambda: self.connection_for_write().as_uri())  # no password

    def producer_or_acquire(self, producer: Any = None) -> Any:
        """The producer ``send_task`` publishes with: on AMQP one of the confirmed pool's."""
        if self._confirmed is None or producer is not None:
            return super().producer_or_acquire(producer)
        return FallbackContext(None, self._confirmed.get().acquire, block=True,  # bounded: LimitExceeded is retried
                               timeout=self.settings.broker_confirm_timeout_s)

    def close(self) -> None:
        if self._confirmed is not None:
            self._confirmed.close()
        super().close()


def create_app(settings: Settings, services: Services | None = None) -> HeuristCelery:
    """A Celery app on the configured broker, holding ``services`` (none: a client's app, which only sends).
    Its tasks ignore callbacks carried in messages (``heurist.unlinked``); its workers outlive the broker
    (``heurist.reconnect``) and its publishes are confirmed (``heurist.confirms``)."""
    broker.register()
    app = HeuristCelery(services or Services("client"), settings, broker=settings.resolved_broker_url(),
                        set_as_current=False, task_cls=UnlinkedTask)
    app.config_from_object("celeryconfig")
    app.conf.broker_connection_retry_on_startup = True
    app.conf.broker_heartbeat = settings.broker_heartbeat_s
    app.conf.task_publish_retry_policy = publish_policy()
    app.steps["worker"].add(WakeOnSignal)  # SIGTERM or Ctrl-C stops a worker at once, not after its poll
    install_liveness(app, settings.liveness_file)  # container health checks read it (heurist.liveness)
    return app


def only_tasks(app: Celery, names: Collection[str]) -> None:
    """Make ``app``'s workers run the tasks ``names`` and nothing else.

    Every Celery app registers the canvas built-ins (``celery.group``, ``celery.chain``, ``celery.chord``,
    ``celery.map``, ...), and a worker runs any of them that arrives on a queue it consumes. Anyone who may
    publish there can send one: a miner's user may publish into the ``ledger`` exchange, and a
    ``celery.group`` there made the trusted ledger publish six ``replay_job`` messages (forced audits, about
    116 s of auditor CPU each, a way to frame an honest miner). Unregistered, such a message is rejected
    and logged by Celery ("Received unregistered task of type 'celery.group'") and nothing runs.
    """
    missing = [name for name in names if name not in app.tasks]  # reading app.tasks finalizes the app
    if missing:
        raise HeuristError(f"only_tasks: {', '.join(missing)} not registered on the {app.main} app")
    for name in [name for name in app.tasks if name not in names]:
        app.tasks.unregister(name)


def services(app: Celery) -> Services:
    """The services of an app built by ``create_app``: what its tasks and bootsteps reach as
    ``services(self.app).ledger`` (each raises ``MissingServiceError`` on a role that lacks it)."""
    if not isinstance(app, HeuristCelery):
        raise HeuristError(f"the Celery app {app.main!r} was not built by heurist.celery_app.create_app")
    return app.services


def worker_pool(broker_url: str, concurrency: int) -> tuple[str, int]:
    """A pool that never forks and is fast on this broker, with its concurrency (measured here).

    AMQP: ``threads`` (at prefetch 1 Celery 5.7's solo pool stalls ~0.5 s between tasks: 40 no-op tasks
    took 26 s solo, 0.07 s threads). Polling transports (the embedded SQLite broker): ``solo``, one task at
    a time (each thread waits a polling interval per task: 9.7 vs 121 presigned-PUT tasks/s).
    """
    if is_amqp(broker_url):
        return "threads", concurrency
    return "solo", 1


def run_worker(worker: Any, role: str) -> None:
    """Run a Celery worker until it stops. Ctrl-C (which Celery reports as exit code 1) raises
    KeyboardInterrupt, so the CLI says "interrupted"; a worker that stopped on an error (Celery logs it as
    "Unrecoverable error" and returns) raises, so the process exits non-zero and its supervisor sees it.

    What is loaded by now (models, pipelines) lives until exit, so it is frozen out of the collector: full
    collections skip it while jobs run, and an idle miner's stop fell from 1.6 s, spent in the exit's
    collection walking the models, to 0.2 s."""
    consumer = symbol_by_name(worker.app.conf.worker_consumer)
    if not issubclass(consumer, ReconnectingConsumer):  # it would die on a queue a dead connection still holds
        raise HeuristError(f"the {role} worker's consumer {consumer.__qualname__} does not derive from "
                           "heurist.reconnect.Consumer: base it on that class (app.conf.worker_consumer)")
    signals_seen: list[str] = []

    def record(sig: str, **_: Any) -> None:
        signals_seen.append(sig)

    gc.freeze()
    worker_shutting_down.connect(record, weak=False)
    try:
        worker.start()
    finally:
        worker_shutting_down.disconnect(record)
    if "SIGINT" in signals_seen:
        raise KeyboardInterrupt
    if worker.exitcode:
        raise HeuristError(f"{role} worker exited with code {worker.exitcode}")
