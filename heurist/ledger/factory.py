"""Open the ledger from settings: one engine, schema migrated to head."""

from __future__ import annotations

from heurist.catalog import Catalog
from heurist.catalog.attestation import WeightPins
from heurist.ledger.db import make_engine
from heurist.ledger.migrate import upgrade
from heurist.ledger.service import Ledger
from heurist.settings import Settings
from heurist.storage.backend import ObjectStore


def open_ledger(settings: Settings, catalog: Catalog, store: ObjectStore | None, *, migrate: bool = True) -> Ledger:
    """A ``Ledger`` on the configured database, migrated to the newest schema first by default.

    ``store`` None gives a read-only view for reports (no completion can be verified without storage).
    """
    url = settings.resolved_database_url()
    if url.startswith("sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    if migrate:
        upgrade(url)
    return Ledger(make_engine(url), catalog, store, escrow_new_miners=settings.escrow_new_miners,
                  pins=WeightPins(settings.resolved_models_dir()))
