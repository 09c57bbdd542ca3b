"""A miner's Celery app, confined to what its broker user may do (``heurist.access.permissions``).

On RabbitMQ a miner declares nothing (it has no configure right): it consumes the tier queues the trusted side
declared (``heurist broker setup``) and sends everything for the ledger (hello, heartbeats, completions,
failures) through its own exchange ``to-ledger.<user>`` into its inbox ``inbox.<user>``, with the AMQP
``user_id`` property set to its broker user, which RabbitMQ checks against the connection's user. The worker
runs without events, gossip, mingle, heartbeats or remote control: each needs a shared exchange (``celeryev``,
``celery.pidbox``) that one miner could delete or spoof for everyone. Monitoring shows miners from the
ledger's signed heartbeats.

Embedded brokers have no users: there the miner sends to the ``ledger`` queue, as the trusted side does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

from amqp.exceptions import NotFound
from celery import Celery
from celery.signals import before_task_publish
from kombu import Exchange, Queue

from heurist.access.backend import inbox_exchange, inbox_name
from heurist.access.queues import direct_queue
from heurist.errors import HeuristError
from heurist.settings import is_amqp
from tasks.names import LEDGER_TASKS

log = logging.getLogger(__name__)

# What a miner's worker runs without (and the app settings that turn each off).
QUIET = {"worker_enable_remote_control": False, "worker_send_task_events": False, "task_send_sent_event": False}
WORKER_OPTIONS = {"without_gossip": True, "without_mingle": True, "without_heartbeat": True}


def broker_user(broker_url: str) -> str:
    """The user a broker URL logs in as (kombu's default: guest)."""
    return unquote(urlsplit(broker_url).username or "guest")


def confine_miner(app: Celery, broker_url: str, ledger_queue: str, queues: Sequence[str],
                  wait_s: float = 300.0) -> None:
    """Make ``app`` a miner's: quiet (``QUIET``); on AMQP also declaring nothing, consuming ``queues`` as they
    are and routing its ledger tasks into its inbox with its ``user_id``, once the inbox exists (waiting up to
    ``wait_s`` for it: `heurist broker add-miner` makes it)."""
    app.conf.update(QUIET)
    if not is_amqp(broker_url):
        return
    user = broker_user(broker_url)
    inbox, exchange = inbox_name(user), inbox_exchange(user)
    # "ledger" is the queue every miner-side sender names; for this app it is the inbox, declared by others.
    to_ledger = Queue(ledger_queue, Exchange(exchange, "direct", no_declare=True), routing_key=inbox, no_declare=True)
    route = {"queue": ledger_queue, "exchange": exchange, "routing_key": inbox}  # without both: amq.default
    app.conf.task_routes = {name: route for name in LEDGER_TASKS}
    app.conf.task_queues = [to_ledger, *(direct_queue(q, declare=False) for q in queues)]

    def sign_as_user(sender: str | None = None, properties: dict[str, Any] | None = None,
                     exchange: str | None = None, **_: Any) -> None:
        # The signal is process-wide: only this app's publishes into its own inbox carry its user_id (another app
        # in the process, a test's trusted client say, sending to the ledger queue is refused by RabbitMQ with it).
        if properties is not None and sender in LEDGER_TASKS and exchange == inbox_exchange(user):
            properties["user_id"] = user

    before_task_publish.connect(sign_as_user, weak=False)
    _await_exchange(app, exchange, wait_s)
    _check_queues(app, queues)


def _check_queues(app: Celery, queues: Sequence[str]) -> None:
    """Each tier queue exists (a passive declare): a miner cannot declare one, so say who must."""
    with app.connection_for_write() as conn:
        for name in queues:
            channel = conn.channel()
            try:
                channel.queue_declare(name, passive=True)
                channel.close()
            except NotFound:
                raise HeuristError(f"queue {name!r} is not on the broker: miners declare nothing; ask the network's "
                                   "operator to run `heurist broker setup` (after adding the model to the "
                                   "catalog)") from None


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
                    raise HeuristError(f"this miner's inbox {name!r} is not on the broker after {wait_s:g}s: ask "
                                       "the network's operator to run `heurist broker add-miner` for its "
                                       "address and use the broker URL it prints") from None
                if not waited:
                    log.warning("waiting for this miner's inbox %r to appear on the broker", name)
                waited = True
                time.sleep(0.5)
