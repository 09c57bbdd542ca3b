"""The verdict notice and where it travels: one small JSON message per ended job, on ``heurist.verdicts``."""

from __future__ import annotations

import secrets

from kombu import Exchange
from pydantic import Field

from heurist.db.base import ID_LEN
from heurist.jobs import Frozen, JobState
from heurist.settings import Settings, is_amqp

EXCHANGE_NAME = "heurist.verdicts"
# Durable, so a broker restart does not make the ledger's publishes fail until a client declares it again;
# notices are transient (a lost one costs a fallback poll, nothing more).
EXCHANGE = Exchange(EXCHANGE_NAME, "direct", durable=True, delivery_mode="transient")
MAX_NOTICE_BYTES = 512  # a notice is about 80 bytes; anything larger is not one of ours
KEY_HEX = 32  # a notify key: 16 random bytes in hex


class VerdictNotice(Frozen):
    """Job ``job_id`` ended in ``state`` (as the ledger committed it). A wake-up only: the client reads the row."""

    job_id: str = Field(min_length=1, max_length=ID_LEN)
    state: JobState


def new_notify_key() -> str:
    """A client's routing key on ``heurist.verdicts``: random, so two clients never share a queue's notices."""
    return secrets.token_hex(KEY_HEX // 2)


def notifies(settings: Settings) -> bool:
    """Whether verdicts are pushed on this network: on RabbitMQ unless turned off (the embedded broker polls)."""
    return settings.verdict_notifications and is_amqp(settings.resolved_broker_url())
