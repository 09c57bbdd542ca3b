"""The credit sweep: jobs that ended after their request gave up (504) are refunded or settled, once.

Real ledger on SQLite and PostgreSQL, outputs on SeaweedFS, completions signed by a miner key.
"""

from __future__ import annotations

import pytest

from heurist.catalog import Catalog
from heurist.credits.ledger import CreditLedger
from heurist.credits.pricing import price_units
from heurist.credits.reconcile import Reconciled, failed_audits, open_charges, reconcile
from heurist.identity import Wallet
from heurist.ledger.audit_service import AuditLedger
from heurist.ledger.service import Ledger
from heurist.ledger.tables import AuditReason
from heurist.points import job_points
from heurist.storage.backend import ObjectStore
from tests.fixtures.ledger import PNG, Clock, answer, deliver, image_job, text_job


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


def test_a_failed_audit_refunds_its_client_once(ledger: Ledger, catalog: Catalog, clock: Clock,
                                                object_store: ObjectStore, miner: Wallet) -> None:
    """Issue 13, finding 7: a failed audit clawed the miner's points back, but the client kept paying for the bad
    output. Now the sweep refunds what the job still holds: an image's whole charge, a settled text job's price."""
    credits, audits = CreditLedger(ledger.engine), AuditLedger(ledger.engine)
    key_id, _ = credits.create_key("app", 100.0)
    image, text, passed = image_job(ledger, catalog, clock), text_job(ledger, catalog, clock), image_job(
        ledger, catalog, clock)
    for job in (image, text, passed):
        credits.reserve(key_id, job.id, price_units(job.spec, job.params))
    for job, data, counts in ((image, PNG, (0, 0)), (text, answer(12, 6), (12, 6)), (passed, PNG, (0, 0))):
        assert deliver(ledger, object_store, job, miner, data, input_tokens=counts[0], output_tokens=counts[1])[1]\
            .accepted
    clock.now += 31
    assert reconcile(credits, ledger.reader, catalog).settled == [text.id]  # the text job, at its verified tokens
    assert failed_audits(credits) == []
    audits.record_audit(image.id, False, AuditReason.IMAGE_MISMATCH, "replay differs")
    audits.record_audit(text.id, False, AuditReason.TEXT_MISMATCH, "teacher forcing differs")
    audits.record_audit(passed.id, True)
    assert ledger.reader.audit_failed(image.id) and not ledger.reader.audit_failed(passed.id)

    done = reconcile(credits, ledger.reader, catalog)
    assert sorted(done.audit_refunded) == sorted([image.id, text.id])
    assert credits.charged(image.id) == 0.0 and credits.charged(text.id) == 0.0
    assert credits.charged(passed.id) == price_units(passed.spec, passed.params)  # a passed audit keeps its charge
    assert reconcile(credits, ledger.reader, catalog) == Reconciled()  # once only
    assert credits.refund(image.id) == 0.0  # nor a request after it
    assert credits.balance(key_id) == pytest.approx(100.0 - credits.charged(passed.id))
