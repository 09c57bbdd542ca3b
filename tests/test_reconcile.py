"""The credit sweep: jobs that ended after their request gave up (504) are refunded or settled, once.

Real ledger on SQLite and PostgreSQL, outputs on SeaweedFS, completions signed by a miner key.
"""

from __future__ import annotations

import pytest

from heurist.catalog import Catalog
from heurist.credits.ledger import CreditLedger
from heurist.credits.pricing import price_units
from heurist.credits.reconcile import open_charges, reconcile
from heurist.identity import Wallet
from heurist.ledger.service import Ledger
from heurist.points import job_points
from heurist.storage.backend import ObjectStore
from tests.fixtures.ledger import Clock, answer, deliver, image_job, text_job


def test_failed_and_finished_text_jobs_are_closed_once(ledger: Ledger, catalog: Catalog, clock: Clock,
                                                        object_store: ObjectStore, miner: Wallet) -> None:
    credits, reader = CreditLedger(ledger.engine), ledger.reader
    key_id, _ = credits.create_key("app", 100.0)
    failed, answered, image, running = (image_job(ledger, catalog, clock), text_job(ledger, catalog, clock),
                                        image_job(ledger, catalog, clock), text_job(ledger, catalog, clock))
    for job in (failed, answered, image, running):
        credits.reserve(key_id, job.id, price_units(job.spec, job.params))
    worst_case = price_units(answered.spec, answered.params)
    ledger.record_failure(failed.id, "the miner reported an error")
    assert deliver(ledger, object_store, answered, miner, answer(12, 6), input_tokens=12, output_tokens=6)[1].accepted
    assert deliver(ledger, object_store, image, miner)[1].accepted
    assert open_charges(credits, clock.now - 30) == []  # within the grace a waiting request closes them
    clock.now += 31
    assert sorted(j for j, _ in open_charges(credits, clock.now - 30)) == sorted([failed.id, answered.id])
    done = reconcile(credits, reader, catalog)
    assert (done.refunded, done.settled) == ([failed.id], [answered.id])
    actual = job_points(answered.spec, answered.params, 12, 6)
    assert credits.charged(failed.id) == 0.0 and credits.charged(answered.id) == pytest.approx(actual)
    assert actual < worst_case
    assert credits.charged(image.id) == price_units(image.spec, image.params)  # images cost what was reserved
    assert credits.charged(running.id) == price_units(running.spec, running.params)  # still running: untouched
    assert reconcile(credits, reader, catalog) == reconcile(credits, reader, catalog)  # nothing left: once only
    assert credits.refund(failed.id) == 0.0 and credits.settle(answered.id, actual) == 0.0  # a late request too
    assert credits.balance(key_id) == pytest.approx(credits.entries_total(key_id))
    assert credits.balance(key_id) == pytest.approx(100.0 - sum(credits.charged(j.id) for j in
                                                                (failed, answered, image, running)))
