"""Who sent a message the ledger is running: the broker user of the inbox it came through.

Each miner's broker user ``U`` reaches the ledger only through exchange ``to-ledger.U`` (``heurist.access``):
no other miner may write it. So the exchange a message was published to names its sender, and the broker has
also checked the ``user_id`` property the miner sets against the connection's user. ``sender_of`` reads both;
a message in an inbox whose ``user_id`` is missing or another user's is rejected without requeue, which
dead-letters it (policy ``heurist-inboxes``).

A ledger task that meets a database or S3 hiccup is retried by Celery, which publishes the message again. It
goes to the ``ledger`` queue, which only trusted users may write, carrying the sender already validated in a
header (``InboxTask.retry``), with the time the ledger first received it (``received_at``); those headers are
believed only there. Re-published into the inbox, as Celery
would by default, it arrived without the owner's ``user_id`` and was dead-lettered: the honest completion lost.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any

from celery.exceptions import Reject

from heurist.access.backend import exchange_owner
from heurist.unlinked import UnlinkedTask

SENDER_HEADER = "heurist_sender"
RECEIVED_HEADER = "heurist_received_at"  # on a retry: when the ledger first received the message (unix s)
_first = threading.local()  # this thread's task's first receipt (threads pool: one task per thread at a time)

log = logging.getLogger(__name__)


def sender_of(request: Any) -> str | None:
    """The broker user that sent the task ``request`` is running: the owner of the inbox it came through,
    None for the ``ledger`` queue (trusted publishers only) and the embedded broker. Rejects (no requeue:
    to the dead letters) an inbox message whose ``user_id`` is not the inbox owner's."""
    exchange = str((getattr(request, "delivery_info", None) or {}).get("exchange") or "")
    owner = exchange_owner(exchange)
    if owner is None:  # only trusted users write anywhere else: a retry carries the sender validated before
        sender = getattr(request, SENDER_HEADER, None)
        return str(sender) if sender else None
    user_id = (getattr(request, "properties", None) or {}).get("user_id")
    if user_id != owner:
        log.warning("refused a message in %s's inbox with user_id %r", owner, user_id)
        raise Reject(f"message in {exchange} without the owner's user_id (has {user_id!r})", requeue=False)
    return owner


def received_at(request: Any, now: float) -> float:
    """When the ledger first received the message ``request`` is running: ``now``, or the time a retry of it
    carries (believed only on the ``ledger`` queue, as the sender is). What an inline output's lateness is judged
    by (``heurist.ledger.inline``): a retry after a storage or database outage keeps the first receipt, so the
    ledger's own outage never makes honest work late. Remembered for this thread's ``InboxTask.retry``."""
    exchange = str((getattr(request, "delivery_info", None) or {}).get("exchange") or "")
    stamp = now
    if exchange_owner(exchange) is None:
        try:
            carried = float(getattr(request, RECEIVED_HEADER, None) or "nan")
        except (TypeError, ValueError):
            carried = math.nan
        if math.isfinite(carried) and 0 < carried <= now:
            stamp = carried
    _first.stamp = stamp
    return stamp


class InboxTask(UnlinkedTask):  # type: ignore[misc]
    """A ledger task whose retries go to the trusted ``ledger`` queue with the sender validated on first receipt."""

    def retry(self, args: Any = None, kwargs: Any = None, exc: Any = None, throw: bool = True, eta: Any = None,
              countdown: Any = None, max_retries: Any = None, **options: Any) -> Any:
        queue = self.app.conf.get("heurist_ledger_queue") or "ledger"
        headers = {**(options.pop("headers", None) or {}), SENDER_HEADER: sender_of(self.request),
                   RECEIVED_HEADER: getattr(_first, "stamp", None) or time.time()}
        options.update(queue=queue, exchange=queue, routing_key=queue, headers=headers)
        return super().retry(args, kwargs, exc, throw, eta, countdown, max_retries, **options)
