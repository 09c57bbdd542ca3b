"""Who sent a message the ledger is running: the broker user of the inbox it came through.

Each miner's broker user ``U`` reaches the ledger only through exchange ``inbox.U`` (``heurist.access``): no
other miner may write it. So the exchange a message was published to names its sender, and the broker has
also checked the ``user_id`` property the miner sets against the connection's user. ``sender_of`` reads both;
a message in an inbox whose ``user_id`` is missing or another user's is rejected without requeue, which
dead-letters it (policy ``heurist-inboxes``).
"""

from __future__ import annotations

import logging
from typing import Any

from celery.exceptions import Reject

from heurist.access.backend import inbox_owner

log = logging.getLogger(__name__)


def sender_of(request: Any) -> str | None:
    """The broker user that sent the task ``request`` is running: the owner of the inbox it came through,
    None for the ``ledger`` queue (trusted publishers only) and the embedded broker. Rejects (no requeue:
    to the dead letters) an inbox message whose ``user_id`` is not the inbox owner's."""
    exchange = str((getattr(request, "delivery_info", None) or {}).get("exchange") or "")
    owner = inbox_owner(exchange)
    if owner is None:
        return None
    user_id = (getattr(request, "properties", None) or {}).get("user_id")
    if user_id != owner:
        log.warning("refused a message in %s's inbox with user_id %r", owner, user_id)
        raise Reject(f"message in {exchange} without the owner's user_id (has {user_id!r})", requeue=False)
    return owner
