"""Open the ledger from settings: one engine, schema migrated to head.

``open_ledger`` is the writer (the ledger consumer, the auditor): it verifies completions, so it needs the
catalog and object storage. ``open_reader`` is everyone who only reads (the client, the gateway, reports).
"""

from __future__ import annotations

from heurist.catalog import Catalog
from heurist.catalog.attestation import WeightPins
from heurist.catalog.tokenizer import TokenizerBook
from heurist.db import open_engine
from heurist.ledger.reader import LedgerReader
from heurist.ledger.service import Ledger
from heurist.ledger.serving import ServingUsers
from heurist.ledger.uptime import EpochClock, UptimeBook
from heurist.settings import Settings, is_amqp
from heurist.signing import Domain
from heurist.storage.backend import ObjectStore


def open_ledger(settings: Settings, catalog: Catalog, store: ObjectStore, *, migrate: bool = True) -> Ledger:
    """A ``Ledger`` on the configured database, migrated to the newest schema first by default."""
    return Ledger(open_engine(settings, migrate), catalog, store, escrow_new_miners=settings.escrow_new_miners,
                  pins=WeightPins(settings.resolved_models_dir()), domain=Domain.of(settings),
                  tokenizers=TokenizerBook(settings.resolved_models_dir()))


def open_reader(settings: Settings, *, migrate: bool = True) -> LedgerReader:
    """A ``LedgerReader`` on the configured database, migrated to the newest schema first by default."""
    return LedgerReader(open_engine(settings, migrate))


def epoch_clock(settings: Settings) -> EpochClock:
    return EpochClock(interval_s=settings.heartbeat_interval_s, epoch_s=settings.epoch_s)


def open_uptime(settings: Settings, ledger: Ledger | LedgerReader) -> UptimeBook:
    """The heartbeat book on the ledger's database, with the ledger's clock; on RabbitMQ a heartbeat counts only
    while its broker user holds a consumer (``heurist.ledger.serving``)."""
    serving = None
    if is_amqp(settings.resolved_broker_url()):
        from heurist.access.backends.rabbitmq import RabbitMQAccess

        serving = ServingUsers(RabbitMQAccess.from_settings(settings).consuming_users)
    return UptimeBook(ledger.engine, epoch_clock(settings), clock=ledger.clock, domain=Domain.of(settings),
                      serving=serving)
