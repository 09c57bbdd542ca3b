"""A miner's Celery app, confined to what its broker user may do (``heurist.access.permissions``).

Celery sends a task for a direct queue through the default exchange and declares the queue first. A miner
user may do neither for the ``ledger`` queue: writing to ``amq.default`` reaches every queue and declaring
``ledger`` needs the right to delete it. So the miner's app routes its ledger tasks (hello, completion,
failure) to the ``ledger`` exchange by name and never declares the ledger queue; the trusted side declares
it (the ledger at start, ``BrokerAccess.add_miner`` before handing out credentials), and the miner waits for
it before its hello, which would otherwise be dropped. Embedded brokers have no users: nothing changes there.
"""

from __future__ import annotations

import logging
import time

from amqp.exceptions import NotFound
from celery import Celery
from kombu import Exchange, Queue

from heurist.errors import HeuristError
from heurist.settings import is_amqp
from tasks.names import LEDGER_TASKS

log = logging.getLogger(__name__)


def confine_miner(app: Celery, broker_url: str, ledger_queue: str, wait_s: float = 300.0) -> None:
    """On AMQP, route the miner's messages to the ledger through the ``ledger`` exchange, declaring nothing,
    once that exchange exists (waiting up to ``wait_s`` for the ledger to start).

    Other brokers are left alone: kombu's virtual transports (the embedded SQLite broker) keep exchange
    bindings in each process, so a miner that did not declare ``ledger`` could not route to it.
    """
    if not is_amqp(broker_url):
        return
    route = {"queue": ledger_queue, "exchange": ledger_queue, "routing_key": ledger_queue}
    app.conf.task_routes = {name: route for name in LEDGER_TASKS}
    app.conf.task_queues = [Queue(ledger_queue, Exchange(ledger_queue, "direct", no_declare=True),
                                  routing_key=ledger_queue, no_declare=True)]
    _await_exchange(app, ledger_queue, wait_s)


def _await_exchange(app: Celery, name: str, wait_s: float) -> None:
    """Poll with a passive declare (no configure right needed) until exchange ``name`` exists."""
    give_up = time.monotonic() + wait_s
    waited = False
    with app.connection_for_write() as conn:
        while True:
            channel = conn.channel()
            try:
                channel.exchange_declare(name, "direct", passive=True)
                channel.close()
                return
            except NotFound:
                if time.monotonic() > give_up:
                    raise HeuristError(f"the ledger's exchange {name!r} is not on the broker after {wait_s:g}s: "
                                       "start the ledger (`heurist ledger`) or ask the operator to run "
                                       "`heurist broker add-miner`") from None
                if not waited:
                    log.warning("waiting for the ledger's exchange %r to appear on the broker", name)
                waited = True
                time.sleep(0.5)
