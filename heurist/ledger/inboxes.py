"""The ledger consumes the miners' inboxes (who sent each message: ``heurist.access.senders``).

``InboxWatcher`` makes the ledger consume each inbox that appears (``heurist broker add-miner`` declares
one per operator), looking every ``inbox_poll_s`` (2 s) on the management API. One message in flight per
inbox (prefetch 1 per consumer) means RabbitMQ hands the ledger inboxes in turn: a miner that floods its own
inbox (capped by the ``heurist-inboxes`` policy) cannot starve the others. The ledger's channel has a
prefetch of its pool size (``HEURIST_LEDGER_CONCURRENCY``) across all inboxes; as each ack frees a slot
RabbitMQ lets the inboxes that wait deliver in turn.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, bootsteps

from heurist.access.backend import inbox_owner
from heurist.access.backends.rabbitmq import RabbitMQAccess
from heurist.access.topology import list_inboxes
from heurist.errors import HeuristError

log = logging.getLogger(__name__)


class InboxWatcher(bootsteps.StartStopStep):
    """Consumes every inbox of ``access``'s vhost (``watch_inboxes`` sets both), looking again each interval."""

    requires = ("celery.worker.consumer.tasks:Tasks",)
    label = "inboxes"
    access: RabbitMQAccess
    interval_s: float

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.tref: Any = None

    def start(self, c: Any) -> None:
        """The first look runs from the event loop, not here: consuming an inbox that already holds messages (a
        restarted ledger's backlog) before the consumer has its callbacks crashed the worker ("Consumer does not
        have any callbacks"), every restart again."""
        c.timer.call_after(0.0, self.refresh, (c,))
        self.tref = c.timer.call_repeatedly(self.interval_s, self.refresh, (c,))

    def stop(self, c: Any) -> None:
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None

    def refresh(self, c: Any) -> None:
        try:
            names = list_inboxes(self.access.api, self.access.vhost)
        except HeuristError as err:  # the management API hiccuped: keep what we consume, look again later
            log.warning("could not list the miners' inboxes: %s", err)
            return
        for name in names:
            if not c.task_consumer.consuming_from(name):
                c.add_task_queue(name)
        for queue in list(c.task_consumer.queues):
            if inbox_owner(queue.name) is not None and queue.name not in names:
                c.cancel_task_queue(queue.name)


def watch_inboxes(app: Celery, access: RabbitMQAccess, interval_s: float) -> None:
    """Make ``app``'s workers consume every inbox on ``access``'s vhost, now and as they appear."""
    step = type("InboxWatcher", (InboxWatcher,), {"access": access, "interval_s": interval_s})
    app.steps["consumer"].add(step)
