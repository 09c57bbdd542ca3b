"""Workers ignore the callbacks a message carries: every heurist task runs on ``UnlinkedTask``.

A Celery message names what happens after its task: ``callbacks`` (``link``), ``errbacks`` (``link_error``),
``chain``, ``chord`` and ``group`` in its body, ``reply_to`` in its properties. The worker obeys them with its
own broker user, so whoever may publish into a queue directs what the worker publishes next, and where:

- a miner that republished a job with ``link`` pointed at an exchange of its own received the honest miner's
  signed completion, re-signed the claim with its own key and was credited (issue 12, attack 3);
- a miner that sent ``record_completion`` to the ledger with an immutable ``link`` to ``replay_job`` would have
  had the trusted ledger queue forced audits for it.

Completions and failures now travel as messages the miner sends itself (``tasks.miner``), so nothing needs a
callback, and none is applied. Celery reads them in two places, both covered here:

- ``celery.app.trace`` (success callbacks, ``chain``, errbacks of a task that raised) reads the request
  context: ``UnlinkedTask.before_start`` clears it before the task body runs;
- ``celery.worker.request.Request`` builds a second context from the raw message for what it reports itself
  (``Reject(requeue=False)``, hard time limits, revokes), and its ``mark_as_failure`` fires that context's
  errbacks and chain: ``UnlinkedRequest`` rewrites the decoded message without them as it is received.

``eta``, ``expires`` and ``timelimit`` headers are left to Celery: the ledger's own retries use ``eta``.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task
from celery.worker.request import Request

log = logging.getLogger(__name__)

# What a message may say about what happens after its task: never obeyed. Every message Celery sends has a
# reply_to (the sender's thread id) and a correlation_id (the task id): those are cleared without a warning.
EMBEDDED = ("callbacks", "errbacks", "chain", "chord")
HEADERS = ("group", "group_index", "reply_to", "correlation_id")
ROUTINE = ("reply_to", "correlation_id")


class UnlinkedRequest(Request):  # type: ignore[misc]
    """A received task message with its callbacks, chain, chord, group and reply-to dropped."""

    def __init__(self, message: Any, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        # Request's private decoded body (a name-mangled slot: mypy cannot see it, hence getattr/setattr)
        args, task_kwargs, embed = getattr(self, "_Request__payload")  # noqa: B009
        dropped = sorted(k for k in EMBEDDED if (embed or {}).get(k))
        dropped += sorted(k for k in HEADERS if k not in ROUTINE and self._request_dict.get(k) not in (None, ""))
        if dropped:
            log.warning("task %s[%s]: ignoring %s carried in the message", self.name, self.id, ", ".join(dropped))
        clean = (args, task_kwargs, {k: v for k, v in (embed or {}).items() if k not in EMBEDDED})
        setattr(self, "_Request__payload", clean)  # noqa: B010
        self._body, self._decoded = clean, True  # the pool's trace reads this copy, not the raw bytes
        self._content_type = self._content_encoding = None
        for key in HEADERS:
            self._request_dict[key] = None
        self._request_dict["properties"] = {k: v for k, v in self._request_dict.get("properties", {}).items()
                                            if k not in ROUTINE}


class UnlinkedTask(Task):  # type: ignore[misc]
    """The base of every task on a heurist app (``heurist.celery_app.create_app``)."""

    Request = f"{__name__}:UnlinkedRequest"

    def before_start(self, task_id: str, args: Any, kwargs: Any) -> None:
        """Clear the trace's request context too (eager calls and custom strategies skip ``UnlinkedRequest``)."""
        request = self.request
        for key in (*EMBEDDED, *HEADERS):
            setattr(request, key, None)


__all__ = ["UnlinkedRequest", "UnlinkedTask"]
