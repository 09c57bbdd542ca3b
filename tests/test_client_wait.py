"""``Client.wait_all``, the one wait of the library (handles, ``map``, the gateway): views in the order asked,
progress after each poll, and a timeout that names exactly the unfinished jobs. On SQLite and PostgreSQL."""

from __future__ import annotations

import time
import uuid

import pytest

from heurist.catalog import Catalog
from heurist.client import Client
from heurist.errors import JobTimeoutError
from heurist.jobs import ImageParams
from heurist.ledger.service import Ledger
from heurist.settings import Settings
from heurist.storage.backend import ObjectStore


def _jobs(ledger: Ledger, catalog: Catalog, n: int) -> list[str]:
    spec = catalog["sd15"]
    ids = [str(uuid.uuid4()) for _ in range(n)]
    for i, job_id in enumerate(ids):
        params = ImageParams(prompt="a kite", width=512, height=512, steps=20, guidance=7.5, seed=i)
        ledger.book.create_job(job_id, spec, params, f"outputs/sd15/{job_id}.png", spec.queue, time.time() + 60)
    return ids


@pytest.fixture
def client(ledger: Ledger, catalog: Catalog, object_store: ObjectStore) -> Client:
    settings = Settings(_env_file=None, result_poll_interval_s=0.02)  # type: ignore[call-arg]
    return Client(settings, catalog=catalog, store=object_store, ledger=ledger.reader)


def test_a_timeout_names_exactly_the_unfinished_jobs(client: Client, ledger: Ledger, catalog: Catalog) -> None:
    ids = _jobs(ledger, catalog, 3)
    ledger.record_failure(ids[0], "gone")
    ledger.record_failure(ids[2], "gone")
    seen: list[tuple[int, int]] = []
    started = time.monotonic()
    with pytest.raises(JobTimeoutError) as err:
        client.wait_all(ids, 0.3, on_progress=lambda done, total: seen.append((done, total)))
    assert 0.3 <= time.monotonic() - started < 3
    assert err.value.job_ids == (ids[1],)
    assert "1 of 3 jobs" in str(err.value) and ids[1] in str(err.value) and ids[0] not in str(err.value)
    assert len(seen) >= 2 and set(seen) == {(2, 3)}  # after every poll


def test_views_come_back_in_the_order_asked(client: Client, ledger: Ledger, catalog: Catalog) -> None:
    ids = _jobs(ledger, catalog, 3)
    for job_id in ids:
        ledger.record_failure(job_id, f"failed {job_id}")
    asked = [ids[2], ids[0], ids[1], ids[0]]  # a repeated id is waited for once, returned where asked
    seen: list[tuple[int, int]] = []
    views = client.wait_all(asked, 5, on_progress=lambda done, total: seen.append((done, total)))
    assert [v.job_id for v in views] == asked
    assert [v.error for v in views] == [f"failed {j}" for j in asked]
    assert seen == [(3, 3)]


def test_one_job_timing_out_says_how_to_find_its_miner(client: Client, ledger: Ledger, catalog: Catalog) -> None:
    [job_id] = _jobs(ledger, catalog, 1)
    with pytest.raises(JobTimeoutError, match=f"job {job_id} not finished after 0.05s; is a miner serving"):
        client.wait_all([job_id], 0.05)
