"""The trusted workers' Celery consumer: poison is refused, logged and kept in ``dead-letters``.

Celery's worker consumer has one hook per kind of poison (``on_unknown_message``, ``on_unknown_task``,
``on_invalid_task``, ``on_decode_error``); each logged the message and dropped it. ``PoisonConsumer`` keeps a
copy first (``heurist.deadletters.keep``), then lets Celery log and reject or ack it as before, so nothing
is requeued and nothing crash-loops. In front of them it refuses a body above ``max_message_bytes`` (headers
counted too) before anything parses it: a 64 MB message took the ledger from 206 MB to 662 MB RSS (issue 12,
attack 7) while it was decoded and validated; now its size is measured, its first 4 KB kept, and it is rejected.

``keep_poison(app, settings)`` declares the dead-letter queue and makes ``app``'s workers use this consumer
(``app.conf.worker_consumer``); the ledger and the auditor call it before they start.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from celery import Celery
from celery.worker.consumer import Consumer
from kombu.exceptions import ContentDisallowed

from heurist.deadletters import Poison, Reason, as_bytes, declare_dead_letters, keep, source_of
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

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Callable[[Any], Any]:
        """Celery's handler, behind a size check that runs before the body is decoded."""
        handle = super().create_task_handler(*args, **kwargs)
        limit = self.max_message_bytes

        def on_task_received(message: Any) -> Any:
            size, headers = len(message.body or b""), _header_bytes(message.headers)
            if size + headers > limit:
                what = f"{size} bytes" + (f" and {headers} bytes of headers" if headers > limit // 8 else "")
                keep(self.app, self.poison(message, Reason.OVERSIZED, f"{what}, above the limit of {limit} "
                                           "(HEURIST_MAX_MESSAGE_BYTES)"))
                message.reject_log_error(log, self.connection_errors)
                return None
            return handle(message)

        return on_task_received

    def on_unknown_message(self, body: Any, message: Any) -> None:
        keep(self.app, self.poison(message, Reason.MALFORMED, "not a Celery task message (no task name)", body))
        super().on_unknown_message(body, message)

    def on_unknown_task(self, body: Any, message: Any, exc: Any) -> None:
        name = _task_name(message, body)
        keep(self.app, self.poison(message, Reason.UNKNOWN_TASK, f"task {name!r} is not one this worker runs",
                                   body))
        super().on_unknown_task(body, message, exc)

    def on_invalid_task(self, body: Any, message: Any, exc: Any) -> None:
        if isinstance(exc, ContentDisallowed):
            reason, detail = Reason.UNDECODABLE, f"content type {message.content_type!r} refused: JSON only"
        else:
            reason, detail = Reason.MALFORMED, f"invalid task message: {exc}"
        keep(self.app, self.poison(message, reason, detail, body))
        super().on_invalid_task(body, message, exc)

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        detail = f"{type(exc).__name__}: {exc} (content type {message.content_type!r})"
        keep(self.app, self.poison(message, Reason.UNDECODABLE, detail))
        super().on_decode_error(message, exc)


def keep_poison(app: Celery, settings: Settings) -> None:
    """Declare ``dead-letters`` on the broker and make ``app``'s workers keep poison there (before
    ``app.Worker``)."""
    with app.connection_for_write() as connection:
        declare_dead_letters(connection)
    app.conf.worker_consumer = type("PoisonConsumer", (PoisonConsumer,),
                                    {"max_message_bytes": settings.max_message_bytes,
                                     "__module__": __name__})
