"""The trusted workers' Celery consumer: poison is refused, logged and kept in ``dead-letters``.

Celery's worker consumer has one hook per kind of poison (``on_unknown_message``, ``on_unknown_task``,
``on_invalid_task``, ``on_decode_error``); each logged the message and dropped it. ``PoisonConsumer`` keeps
a copy (``heurist.deadletters.keep``, which logs it) and acks it: nothing is requeued, nothing crash-loops,
and a queue whose policy dead-letters rejected messages does not keep it twice. In front of those hooks it
refuses a body above ``max_message_bytes`` (headers counted too) before anything parses it: a 64 MB message
took the ledger from 206 MB to 662 MB RSS (issue 12, attack 7) while it was decoded and validated. Measured
here with a 64 MB hello on RabbitMQ: before, 128 MB idle, 259 MB after (peak 450 MB) and the hello was
parsed and its signature checked; now 129 MB idle, 140 MB after (peak 321 MB: the AMQP frame itself) and
only its size is read, its first 4 KB kept.

``keep_poison(app, settings)`` declares the dead-letter queue and makes ``app``'s workers use this consumer
(``app.conf.worker_consumer``); the ledger and the auditor call it before they start.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from celery import Celery
from kombu.exceptions import ContentDisallowed

from heurist.deadletters import Poison, Reason, as_bytes, declare_dead_letters, keep, source_of
from heurist.reconnect import Consumer  # Celery's, retrying queues a dead connection still holds
from heurist.settings import Settings

log = logging.getLogger(__name__)


def _task_name(message: Any, payload: Any = None) -> str | None:
    headers = message.headers if isinstance(message.headers, dict) else {}
    name = headers.get("task")
    if name is None and isinstance(payload, dict):
        name = payload.get("task")
    return None if name is None else str(name)


def _header_bytes(headers: Any) -> int:
    """About how many bytes a message's headers hold (Celery copies them into every request): ~500 for
    Celery's own, so a miner cannot move the bulk of a message from its body into a header."""
    if not isinstance(headers, dict):
        return 0
    return sum(len(str(key)) + len(str(value)) for key, value in headers.items())


class PoisonConsumer(Consumer):
    """Celery's consumer, keeping each poison message in ``dead-letters`` before it is refused."""

    max_message_bytes = 65_536  # keep_poison sets the configured limit on a subclass

    def poison(self, message: Any, reason: Reason, detail: str, payload: Any = None) -> Poison:
        properties = message.properties if isinstance(message.properties, dict) else {}
        return Poison(reason=reason, detail=detail, source=source_of(message.delivery_info),
                      sender=properties.get("user_id"), body=as_bytes(message.body),
                      task=_task_name(message, payload), dead_at=time.time())

    def refuse(self, message: Any, reason: Reason, detail: str, payload: Any = None) -> None:
        """Keep the message, then ack it: rejecting it would make a queue with a dead-letter policy keep it a
        second time. If it could not be kept, reject it without requeue, so that policy keeps the original."""
        if keep(self.app, self.poison(message, reason, detail, payload)):
            message.ack_log_error(log, self.connection_errors)
        else:
            message.reject_log_error(log, self.connection_errors)

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Callable[[Any], Any]:
        """Celery's handler, behind a size check that runs before the body is decoded."""
        handle = super().create_task_handler(*args, **kwargs)
        limit = self.max_message_bytes

        def on_task_received(message: Any) -> Any:
            size, headers = len(message.body or b""), _header_bytes(message.headers)
            if size + headers > limit:
                what = f"{size} bytes" + (f" and {headers} bytes of headers" if headers > limit // 8 else "")
                self.refuse(message, Reason.OVERSIZED, f"{what}, above the limit of {limit} "
                            "(HEURIST_MAX_MESSAGE_BYTES)")
                return None
            try:
                return handle(message)
            except (*self.connection_errors, *self.channel_errors):
                raise
            except Exception as err:  # e.g. a dict body where Celery unpacks (args, kwargs, embed): it once
                # raised out of the consumer, which restarted, got the message again, and crash-looped
                self.refuse(message, Reason.MALFORMED, f"not a task message Celery can run: {type(err).__name__}: "
                            f"{str(err)[:200]}")
                return None

        return on_task_received

    def on_unknown_message(self, body: Any, message: Any) -> None:
        self.refuse(message, Reason.MALFORMED, "not a Celery task message (no task name)", body)

    def on_unknown_task(self, body: Any, message: Any, exc: Any) -> None:
        name = _task_name(message, body)
        log.error("Received unregistered task of type %r from %s: refused (this worker runs only its own tasks)",
                  name, _sender(message))
        self.refuse(message, Reason.UNKNOWN_TASK, f"task {name!r} is not one this worker runs", body)

    def on_invalid_task(self, body: Any, message: Any, exc: Any) -> None:
        if isinstance(exc, ContentDisallowed):
            reason, detail = Reason.UNDECODABLE, f"content type {message.content_type!r} refused: JSON only"
        else:
            reason, detail = Reason.MALFORMED, f"invalid task message: {exc}"
        self.refuse(message, reason, detail, body)

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        detail = f"{type(exc).__name__}: {exc} (content type {message.content_type!r})"
        self.refuse(message, Reason.UNDECODABLE, detail)


def _sender(message: Any) -> str:
    properties = message.properties if isinstance(message.properties, dict) else {}
    return str(properties.get("user_id") or "an unknown sender")


def keep_poison(app: Celery, settings: Settings) -> None:
    """Declare ``dead-letters`` on the broker and make ``app``'s workers keep poison there (before
    ``app.Worker``)."""
    with app.connection_for_write() as connection:
        declare_dead_letters(connection)
    app.conf.worker_consumer = type("PoisonConsumer", (PoisonConsumer,),
                                    {"max_message_bytes": settings.max_message_bytes,
                                     "__module__": __name__})
