"""The stranded-job sweep (``heurist.ledger.sweep``) on SQLite and PostgreSQL, sending to a real RabbitMQ and
looking at real objects in SeaweedFS: re-sent with a fresh deadline while the budget lasts, then failed and
refunded; exactly once when two ledger processes sweep at the same time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from amqp.exceptions import NotFound
from celery import Celery
from kombu import Connection
from sqlalchemy import Engine, func, select

from heurist.catalog import Catalog
from heurist.celery_app import create_app
from heurist.credits.ledger import CreditLedger
from heurist.credits.reconcile import reconcile
from heurist.db.engine import make_engine, session_scope
from heurist.dispatch import DispatchSigner, send_job
from heurist.identity import Wallet
from heurist.jobs import Failure, JobMessage, JobState, SignedJob
from heurist.ledger.redispatch import ResendOnReport
from heurist.ledger.service import Ledger
from heurist.ledger.sweep import Sweep, SweepPolicy, never_completed
from heurist.ledger.tables import JobResend, Reason
from heurist.monitoring.ledger_stats import LedgerStatsReader
from heurist.settings import Settings
from heurist.signing import sign_failure
from heurist.storage.backend import ObjectStore
from tests.fixtures.ledger import Clock, Job, answer, completion, deliver, sign, text_job
from tests.fixtures.race import raced

GRACE, WAIT = 10.0, 100.0
POLICY = SweepPolicy(grace_s=GRACE, output_wait_s=WAIT, resends=2)


@pytest.fixture(scope="module")
def app(rabbit_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Celery]:
    settings = Settings(_env_file=None, broker_url=rabbit_url, data_dir=tmp_path_factory.mktemp("app"))  # type: ignore[call-arg]
    app = create_app(settings)
    yield app
    app.close()


def sweep_for(ledger: Ledger, app: Celery, policy: SweepPolicy = POLICY) -> Sweep:
    signer = DispatchSigner(Wallet.create())
    return Sweep(ledger, lambda message, queue: send_job(app, signer.sign(message), queue), policy)


def queued_messages(app: Celery, queue: str) -> list[JobMessage]:
    """Drain ``queue``: the job messages sent to it (none before the first send declared it)."""
    found = []
    with Connection(app.conf.broker_url) as conn:
        channel = conn.default_channel
        try:
            while (raw := channel.basic_get(queue=queue, no_ack=True)) is not None:
                args, _, _ = json.loads(raw.body)
                found.append(SignedJob.model_validate(args[0]).job)
        except NotFound:
            return []
    return found


def resend_rows(engine: Engine, job_id: str) -> list[JobResend]:
    with session_scope(engine) as session:
        return list(session.scalars(select(JobResend).where(JobResend.job_id == job_id)
                                    .order_by(JobResend.attempt)))


def test_a_stranded_job_is_resent_with_a_fresh_deadline_then_failed(ledger: Ledger, catalog: Catalog,
                                                                     clock: Clock, app: Celery,
                                                                     migrated_url: str) -> None:
    job = text_job(ledger, catalog, clock)  # deadline in 60 s
    duration, sweep = job.deadline_at - clock.now, sweep_for(ledger, app)
    queued_messages(app, job.spec.queue)  # only what the sweep sends from here on
    clock.now = job.deadline_at + GRACE - 0.1
    assert sweep.run_once().resent == []  # within the grace: a completion may still be on its way
    deadline = job.deadline_at
    for attempt in (1, 2):
        clock.now = deadline + GRACE + 0.5
        assert sweep.run_once().resent == [job.id]
        [message] = queued_messages(app, job.spec.queue)
        assert (message.job_id, message.params, message.model_id) == (job.id, job.params, job.spec.id)
        assert message.deadline_at == pytest.approx(clock.now + duration)  # the original allowance, again
        assert job.output_key in message.output_url  # same key, fresh presigned URL
        view = ledger.reader.job(job.id)
        assert view is not None and view.state is JobState.QUEUED and view.resends == attempt
        assert view.deadline_at == pytest.approx(message.deadline_at)
        assert sweep.run_once().resent == []  # the fresh deadline has not passed
        deadline = view.deadline_at
    rows = resend_rows(ledger.engine, job.id)
    assert [r.attempt for r in rows] == [1, 2] and rows[0].previous_deadline_at == pytest.approx(job.deadline_at)
    clock.now = deadline + GRACE + 0.5
    assert sweep.run_once().failed == [job.id]
    view = ledger.reader.job(job.id)
    assert view is not None and view.state is JobState.FAILED and view.error == never_completed(2)
    assert view.error == "never completed: lost, purged or never taken; re-sent 2 times"
    assert queued_messages(app, job.spec.queue) == []  # failed, not sent a third time
    assert sweep.run_once() == sweep.run_once()  # nothing left: FAILED is terminal
    assert len(resend_rows(ledger.engine, job.id)) == 2
    with session_scope(ledger.engine) as session:  # what the exporter reports as heurist_job_resends_total
        assert LedgerStatsReader(catalog).read(session, 0.0).resends == {job.spec.id: 2}
    text_job(ledger, catalog, clock)  # never re-sent: `heurist jobs --resent` leaves it out
    [listed] = heurist_jobs(migrated_url, "--resent")
    assert (listed["job_id"], listed["state"], listed["resends"], listed["error"]) == \
        (job.id, "failed", 2, never_completed(2))
    assert len(heurist_jobs(migrated_url)) == 2


def heurist_jobs(database_url: str, *args: str) -> list[dict[str, Any]]:
    """What an operator sees: `heurist jobs --json` on the ledger database."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("HEURIST_")},
           "HEURIST_DATABASE_URL": database_url}
    done = subprocess.run([sys.executable, "-m", "heurist.cli.main", "jobs", "--json", *args], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout.strip().splitlines()[-1]))


def test_a_completion_of_the_resent_job_is_judged_by_its_fresh_deadline(
        ledger: Ledger, catalog: Catalog, clock: Clock, app: Celery, object_store: ObjectStore,
        miner: Wallet) -> None:
    job = text_job(ledger, catalog, clock)
    clock.now = job.deadline_at + GRACE + 1
    assert sweep_for(ledger, app).run_once().resent == [job.id]
    queued_messages(app, job.spec.queue)
    clock.now += 5  # well past the first deadline, within the fresh one
    _, verdict = deliver(ledger, object_store, job, miner, answer(10, 5), input_tokens=10, output_tokens=5)
    assert verdict.accepted and verdict.state is JobState.COMPLETED and verdict.points_micro > 0


def test_a_job_whose_output_exists_waits_for_its_completion(ledger: Ledger, catalog: Catalog, clock: Clock,
                                                            app: Celery, object_store: ObjectStore) -> None:
    job = text_job(ledger, catalog, clock)
    object_store.put(job.output_key, b'{"text": "uploaded"}', "application/json")  # a completion is on its way
    sweep = sweep_for(ledger, app)
    queued_messages(app, job.spec.queue)
    clock.now = job.deadline_at + GRACE + 1
    assert sweep.run_once().waiting == [job.id]
    clock.now = job.deadline_at + GRACE + WAIT - 1
    done = sweep.run_once()
    assert (done.waiting, done.resent) == ([job.id], [])
    assert queued_messages(app, job.spec.queue) == []
    clock.now = job.deadline_at + GRACE + WAIT + 1  # bounded: an object anyone PUT cannot hold the job forever
    assert sweep.run_once().resent == [job.id]
    assert [m.job_id for m in queued_messages(app, job.spec.queue)] == [job.id]


def test_reports_and_bad_results_send_the_job_to_another_miner_and_never_fail_it(
        ledger: Ledger, catalog: Catalog, clock: Clock, app: Celery, object_store: ObjectStore,
        miner: Wallet) -> None:
    """Issue 13, finding 2: a miner's failure report (or a bad result) used to end the job, whoever sent it. Now
    each gives the job to another miner at once while the re-send budget lasts (``ResendOnReport``); past the
    budget the job waits for a completion or its deadline, and only the sweep fails it."""
    job = text_job(ledger, catalog, clock)
    queued_messages(app, job.spec.queue)  # an empty queue to count in
    sweep = sweep_for(ledger, app)
    ledger.middleware.append(ResendOnReport(sweep))
    report = sign_failure(miner, Failure(job_id=job.id, miner=miner.address, error="RuntimeError: CUDA OOM",
                                         failed_at=clock.now))
    assert ledger.report_failure(report)
    object_store.put(job.output_key, b"not an answer", "application/json")  # a bad result: sha256 mismatch
    bad = ledger.record_completion(sign(completion(job, miner, answer(5, 3)), miner))
    assert (bad.accepted, bad.state) == (False, JobState.QUEUED)
    assert ledger.report_failure(report)  # the budget (2) is spent: recorded, not re-sent
    assert [m.job_id for m in queued_messages(app, job.spec.queue)] == [job.id, job.id]
    view = ledger.reader.job(job.id)
    assert view is not None and (view.state, view.resends) == (JobState.QUEUED, 2)
    assert [r for r, _ in ledger.reader.rejections(job.id)] == [Reason.FAILURE_REPORTED, Reason.SHA256_MISMATCH,
                                                                Reason.FAILURE_REPORTED]
    clock.now = view.deadline_at + GRACE + WAIT + 1  # past the wait the bad result's object earns it
    assert sweep.run_once().failed == [job.id]
    view = ledger.reader.job(job.id)
    assert view is not None and view.state is JobState.FAILED
    assert view.error == never_completed(2, 3, "RuntimeError: CUDA OOM") == "no verified result: 3 failure " \
        "reports or bad results from miners; re-sent 2 times; last report: RuntimeError: CUDA OOM"


def _race(sweeps: list[Sweep]) -> list[list[str]]:
    """Run one round of each sweep at the same instant, on its own thread; what each re-sent and failed."""
    return [done.resent + done.failed for done in raced(*[sweep.run_once for sweep in sweeps])]


def test_two_ledgers_sweeping_at_once_resend_fail_and_refund_each_job_once(
        ledger: Ledger, migrated_url: str, catalog: Catalog, clock: Clock, app: Celery,
        object_store: ObjectStore, tmp_path: Path) -> None:
    credits = CreditLedger(ledger.engine)
    key_id, _ = credits.create_key("app", initial_units=100.0)
    jobs: list[Job] = []
    for _ in range(12):
        jobs.append(text_job(ledger, catalog, clock))
        credits.reserve(key_id, jobs[-1].id, 2.5)
    assert credits.balance(key_id) == pytest.approx(70.0)
    queued_messages(app, jobs[0].spec.queue)
    other_engine = make_engine(migrated_url)  # a second ledger process: its own engine and pool
    try:
        other = Ledger(other_engine, catalog, object_store, clock=clock)
        policy = SweepPolicy(grace_s=GRACE, output_wait_s=WAIT, resends=1)
        sweeps = [sweep_for(ledger, app, policy), sweep_for(other, app, policy)]
        clock.now = jobs[-1].deadline_at + GRACE + 1
        first, second = _race(sweeps)
        assert sorted(first + second) == sorted(j.id for j in jobs) and not set(first) & set(second)
        sent = queued_messages(app, jobs[0].spec.queue)
        assert sorted(m.job_id for m in sent) == sorted(j.id for j in jobs)  # each once, none twice
        with session_scope(ledger.engine) as session:
            assert session.scalar(select(func.count()).select_from(JobResend)) == len(jobs)
        clock.now = max(m.deadline_at for m in sent) + GRACE + 1
        first, second = _race(sweeps)  # budget spent: each job is failed, by one of them
        assert sorted(first + second) == sorted(j.id for j in jobs) and not set(first) & set(second)
        assert queued_messages(app, jobs[0].spec.queue) == []
        views = ledger.reader.jobs([j.id for j in jobs])
        assert {(v.state, v.error, v.resends) for v in views} == {(JobState.FAILED, never_completed(1), 1)}
        # FAILED is what refunds: the gateway's reconcile loop gives each reservation back, once.
        clock.now += 60
        refunds = [reconcile(credits, ledger.reader, catalog, grace_s=30.0) for _ in range(2)]
        assert sorted(refunds[0].refunded) == sorted(j.id for j in jobs) and refunds[1].refunded == []
        assert credits.balance(key_id) == pytest.approx(100.0) == credits.entries_total(key_id)
        assert all(credits.charged(j.id) == 0 for j in jobs)
    finally:
        other_engine.dispose()
