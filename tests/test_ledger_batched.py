"""Every single-ledger test of ``tests/test_ledger.py`` again, on a ledger that batches (``heurist.ledger.batch``):
its reads, credits and outbox sends go through the batch threads, so per-delivery semantics must not change."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from heurist.catalog import Catalog
from heurist.catalog.attestation import WeightPins
from heurist.ledger.service import Ledger
from heurist.storage.backend import ObjectStore
from tests.fixtures.ledger import Clock
from tests.test_ledger import *  # noqa: F403 - the tests to run again

pytestmark = pytest.mark.slow  # 64 tests again on 2 databases; make test has tests/test_ledger_batch.py


@pytest.fixture
def ledger(engine: Engine, catalog: Catalog, object_store: ObjectStore, clock: Clock) -> Iterator[Ledger]:
    """The fixtures' ledger, batching: up to 16 deliveries together, waiting up to 20 ms when busy."""
    ledger = Ledger(engine, catalog, object_store, clock=clock, pins=WeightPins(None))
    ledger.batch(16, 0.02)
    yield ledger
    assert ledger.batches is not None
    ledger.batches.close()
