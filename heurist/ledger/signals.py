"""Hooks on the ledger's verdicts, as Celery signals: what follows a verdict is never inside the task."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import Celery, Task
from celery.signals import task_success

from tasks.names import RECORD_COMPLETION

Verdict = dict[str, Any]  # what the record-completion task returns (tasks/ledger.py)


def on_verdict(app: Celery, handle: Callable[[Verdict], object], when: Callable[[Verdict], bool]) -> None:
    """Call ``handle(verdict)`` after each completion ``app``'s ledger judged, if ``when(verdict)``.

    Receivers run in the order they were connected."""

    def on_success(sender: Task | None = None, result: Any = None, **_: Any) -> None:
        if sender is None or sender.name != RECORD_COMPLETION or sender.app is not app:
            return
        if isinstance(result, dict) and when(result):
            handle(result)

    task_success.connect(on_success, weak=False)


def first_acceptance(verdict: Verdict) -> bool:
    return bool(verdict.get("accepted")) and not verdict.get("duplicate")
