"""The broker names the whole network shares, and kombu's view of them: the tier queues.

Both sides use these definitions: the trusted side declares them (``heurist.access.topology``), miners use
them with ``no_declare`` (they have no configure right), so a name means the same queue everywhere.
"""

from __future__ import annotations

from kombu import Exchange, Queue

STREAM_EXCHANGE = "heurist.stream"


def direct_queue(name: str, declare: bool = True) -> Queue:
    """Queue ``name`` bound to the direct exchange of the same name, as Celery declares ``send_task(queue=name)``."""
    return Queue(name, Exchange(name, "direct", no_declare=not declare), routing_key=name, no_declare=not declare)


def tier_queue(name: str, declare: bool = True) -> Queue:
    """A model's tier queue (``vram8.tiny-sd``)."""
    return direct_queue(name, declare)
