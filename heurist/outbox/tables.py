"""The outbox table: one row per trusted message the ledger decided to send, committed with the decision.

``key`` is unique (``audit:<job id>``): a message is decided once however often its transaction is retried or
raced. ``sent_at`` is set once the broker confirmed the publish; ``lease_until`` keeps two relays (two ledger
processes) from publishing the same row at the same moment, and a relay that died holding a lease only delays
the row until the lease runs out (120 s by default). So a row is published at least once, in practice once:
twice only when a relay dies between the broker's confirm and its own ``sent_at`` write, and every consumer of
an outbox message is idempotent by key (an auditor judges a job once).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Double, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from heurist.db.base import Base, BigId

KEY_LEN = 128
NAME_LEN = 128


class OutboxEntry(Base):
    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(KEY_LEN), unique=True)
    task: Mapped[str] = mapped_column(String(NAME_LEN))  # a Celery task name
    queue: Mapped[str] = mapped_column(String(NAME_LEN))
    args: Mapped[list[Any]] = mapped_column(JSON())
    created_at: Mapped[float] = mapped_column(Double())
    sent_at: Mapped[float | None] = mapped_column(Double(), nullable=True, index=True)
    lease_until: Mapped[float | None] = mapped_column(Double(), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer(), default=0, server_default="0")
