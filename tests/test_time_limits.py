"""Hard time limits (issue 14, item 6): each job message carries Celery's time limits, derived from its deadline;
the miner stops a model at the soft limit and abandons a hung call at the hard one, reporting each; the catalog
refuses a deadline the broker's consumer_timeout would cut.

Real RabbitMQ, PostgreSQL and SeaweedFS; the hung call is ``workers.testing.faults`` ("hang"), a pipeline that
blocks for ever on a marked prompt, as a stuck native call does.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from kombu import Connection
from sqlalchemy import select

from heurist.catalog import ModelSpec, load_catalog
from heurist.catalog.loader import deadline_at_limits, parse_catalog
from heurist.catalog.schema import Deadline
from heurist.celery_app import create_app
from heurist.client import Client
from heurist.db.engine import session_scope
from heurist.dispatch import DispatchSigner, send_job
from heurist.embedded import EmbeddedNetwork, wait_until
from heurist.errors import CatalogError, FailureKind, HardTimeLimitExceeded, JobFailedError, TimeLimitExceeded
from heurist.identity import Wallet
from heurist.jobs import ImageParams, JobMessage, JobState
from heurist.ledger.tables import Rejection
from heurist.settings import Settings
from heurist.signing import failure_signer
from heurist.storage.backends.s3 import S3ObjectStore
from heurist.submission import image_params
from heurist.time_limits import JobClock, TimeLimits
from workers.testing.faults import HANG_MARK

RABBIT_CONSUMER_TIMEOUT_S = 1800.0  # RabbitMQ's default consumer_timeout, 1,800,000 ms
SWEEP_GRACE_S = 4.0


def test_limits_are_derived_from_the_deadline() -> None:
    assert TimeLimits.for_time_left(40) == TimeLimits(soft_s=36.0, hard_s=44.0)
    assert TimeLimits.for_time_left(1200) == TimeLimits(soft_s=1170.0, hard_s=1230.0)  # both capped at 30 s
    assert TimeLimits.for_time_left(6) == TimeLimits(soft_s=5.4, hard_s=8.0)  # a grace of at least 2 s
    now = 1000.0
    own = JobClock.start(deadline_at=now + 40, now=now)
    assert (own.soft_at, own.hard_at) == (now + 36, now + 44)
    tighter = JobClock.start(deadline_at=now + 40, now=now, header=(20.0, 10.0))  # Celery's (hard, soft)
    assert (tighter.soft_at, tighter.hard_at) == (now + 10, now + 20)
    looser = JobClock.start(deadline_at=now + 40, now=now, header=(400.0, 300.0))  # waited in a queue: ignored
    assert (looser.soft_at, looser.hard_at) == (own.soft_at, own.hard_at)


@pytest.fixture(scope="module")
def app(rabbit_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Celery]:
    settings = Settings(_env_file=None, broker_url=rabbit_url, data_dir=tmp_path_factory.mktemp("app"))  # type: ignore[call-arg]
    app = create_app(settings)
    yield app
    app.close()


def test_job_messages_carry_the_timelimit_header(app: Celery) -> None:
    queue = f"vram8.limits-{uuid.uuid4().hex[:8]}"
    signer = DispatchSigner(Wallet.create())
    for left in (40.0, 1200.0):
        job = JobMessage(job_id=str(uuid.uuid4()), model_id="tiny-sd", output_url="http://s3/b/k.png",
                         deadline_at=time.time() + left,
                         params=ImageParams(prompt="p", width=64, height=64, steps=2, guidance=7.5, seed=1))
        send_job(app, signer.sign(job), queue)
        with Connection(app.conf.broker_url) as conn:
            raw = conn.default_channel.basic_get(queue=queue, no_ack=True)
        assert raw is not None and json.loads(raw.body)[0][0]["job"]["job_id"] == job.job_id
        hard, soft = raw.headers["timelimit"]
        expected = TimeLimits.for_time_left(left)
        assert hard == pytest.approx(expected.hard_s, abs=0.5) and soft == pytest.approx(expected.soft_s, abs=0.5)
        assert soft < left < hard


def test_the_catalog_refuses_a_deadline_over_the_maximum() -> None:
    shipped = load_catalog()
    for spec in shipped.values():
        seconds, _ = deadline_at_limits(spec)
        assert seconds <= Settings(_env_file=None).max_job_deadline_s  # type: ignore[call-arg]
        assert TimeLimits.for_time_left(seconds).hard_s < RABBIT_CONSUMER_TIMEOUT_S
    import tomllib
    from importlib import resources

    data = tomllib.loads(resources.files("heurist.catalog").joinpath("models.toml").read_text())
    del data["models"]["mixtral-8x7b"]["deadline"]["max_s"]  # as it shipped before: 2,196 s and more
    with pytest.raises(CatalogError) as caught:
        parse_catalog(data, "models.toml", max_deadline_s=1500)
    message = str(caught.value)
    assert "model 'mixtral-8x7b'" in message and "7,956 s" in message and "= 1,500 s" in message
    assert "consumer_timeout" in message and "max_s = 1500" in message
    with pytest.raises(CatalogError, match=r"'mixtral-8x7b' .* deadline of 1,200 s, above .* = 1,199 s"):
        load_catalog(max_deadline_s=1199)  # its cap, max_s = 1200
    assert len(load_catalog(max_deadline_s=1200)) == len(shipped)


@pytest.fixture(scope="module")
def runtime_parts(shared_models_dir: Path) -> tuple[Any, Any]:
    from workers.miner.device import detect_device
    from workers.miner.pipelines import load_pipeline

    device = detect_device("cpu")
    return device, load_pipeline(load_catalog()["tiny-sd"], device, shared_models_dir)


def _image_job(store: S3ObjectStore, prompt: str, size: int, steps: int, left_s: float) -> JobMessage:
    key = f"outputs/tiny-sd/{uuid.uuid4()}.png"
    return JobMessage(job_id=str(uuid.uuid4()), model_id="tiny-sd", output_url=store.presign_put(key, 120),
                      deadline_at=time.time() + left_s,
                      params=ImageParams(prompt=prompt, width=size, height=size, steps=steps, guidance=7.5, seed=3))


def test_a_job_past_its_soft_limit_stops_cleanly_and_the_runtime_serves_the_next(
        runtime_parts: tuple[Any, Any], object_store: S3ObjectStore) -> None:
    from workers.miner.runtime import MinerRuntime

    device, pipeline = runtime_parts
    runtime = MinerRuntime(wallet=Wallet.create(), device=device.info, pipelines={"tiny-sd": pipeline})
    long_job = _image_job(object_store, "a storm", 256, 50, left_s=4.0)  # ~30 s of work on one core
    started = time.monotonic()
    with pytest.raises(TimeLimitExceeded) as caught:
        runtime.execute(long_job)
    took = time.monotonic() - started
    report = runtime.failure(long_job, caught.value).failure.error
    print(f"\nsoft limit: stopped after {took:.1f} s: {report}")
    assert took < 12.0  # the soft limit is 3.6 s after the start, a step about 0.6 s (2 s under load); all 50: ~30 s
    assert report.startswith("time limit: image job stopped after step ") and "of 50" in report
    assert FailureKind.of(report) is FailureKind.TIME_LIMIT
    done = runtime.execute(_image_job(object_store, "a calm sea", 64, 2, left_s=60.0))
    assert done.completion.output_bytes > 0


def test_a_hung_call_is_reported_at_the_hard_limit(runtime_parts: tuple[Any, Any]) -> None:
    """In process, with the process exit recorded instead of done (the live test below exits for real)."""
    from workers.miner.runtime import MinerRuntime
    from workers.miner.watchdog import EXIT_HUNG, Watchdog
    from workers.testing.faults import HangOnMark

    device, pipeline = runtime_parts
    hang = HangOnMark()
    reported: list[tuple[str, str]] = []
    exits: list[int] = []
    fired = threading.Event()
    wallet = Wallet.create()
    runtime = MinerRuntime(wallet=wallet, device=device.info, pipelines=hang.wrap_pipelines({"tiny-sd": pipeline}))

    def on_hung(job: JobMessage, err: HardTimeLimitExceeded) -> None:
        signed = runtime.failure(job, err)
        reported.append((job.job_id, signed.failure.error))
        assert failure_signer(signed) == wallet.address

    def exit_(code: int) -> None:
        exits.append(code)
        fired.set()

    runtime.watchdog = Watchdog(on_hung, exit=exit_)
    job = JobMessage(job_id=str(uuid.uuid4()), model_id="tiny-sd", output_url="http://127.0.0.1:1/b/k.png",
                     deadline_at=time.time() + 3.0,
                     params=ImageParams(prompt=f"{HANG_MARK} a lighthouse", width=64, height=64, steps=2,
                                        guidance=7.5, seed=1))
    started = time.monotonic()
    threading.Thread(target=runtime.execute, args=(job,), daemon=True).start()  # it never returns
    assert fired.wait(15)
    took = time.monotonic() - started
    assert hang.stuck.is_set() and exits == [EXIT_HUNG]
    [(job_id, text)] = reported
    assert job_id == job.job_id and text.startswith("hard time limit: ")
    assert 5.0 <= took < 7.0  # the deadline (3 s) plus the grace (2 s)


@pytest.fixture(scope="module")
def network_settings() -> dict[str, Any]:
    """No re-sends and a fast sweep: a job a miner reported ends FAILED soon after its deadline; no audits. The
    sweep's grace must outlast the hard limit's (2 s here, 30 s at most; the default grace is 60 s), or a job is
    failed before its hung miner's report arrives."""
    return {"job_resends": 0, "sweep_grace_s": SWEEP_GRACE_S, "sweep_interval_s": 0.5, "audit_base_rate": 0.0,
            "audit_new_miner_rate": 0.0, "audit_suspicious_rate": 0.0,
            "restart_settle_s": 1.0}  # the embedded network's supervisor restarts the hung miner's exit 75


def _short(deadline_s: float) -> ModelSpec:
    return load_catalog()["tiny-sd"].model_copy(update={"deadline": Deadline(base_s=deadline_s, per_unit_s=0.0)})


def _reports(client: Client, job_id: str) -> list[str]:
    with session_scope(client.ledger.engine) as session:
        return list(session.scalars(select(Rejection.detail).where(Rejection.job_id == job_id)))


@pytest.mark.slow  # a whole network for one test: in `make test-slow`, keeping `make test` near 15 min
def test_on_the_network_a_job_over_its_limits_fails_cleanly_and_jobs_go_on(network: EmbeddedNetwork,
                                                                            client: Client) -> None:
    """A live miner with the hang fault: a job past its soft limit is reported "time limit" and the miner serves
    the next job; a hung call is reported "hard time limit" and the miner exits 75 for its supervisor; the
    network completes the next job, and the hung job's message, requeued by the exit, runs nowhere."""
    from workers.miner.watchdog import EXIT_HUNG

    wallet = network.start_miner(["tiny-sd"], name="hanger", cheat="hang")
    miner = network.procs["hanger"]
    wait_until(lambda: client.ledger.is_registered(wallet.address), 120, "the miner to register",
               check=network.check_alive)

    spec = _short(5.0)
    slow = client.submit_params(spec, image_params(spec, "a storm at sea", width=256, height=256, steps=50, seed=1))
    with pytest.raises(JobFailedError) as caught:
        slow.result(timeout=60)
    [report] = _reports(client, slow.id)
    assert report.startswith("time limit: image job stopped after step "), report
    assert (caught.value.public or "").endswith("miners reported: the model did not finish within the job's time "
                                                "limit")
    served = client.submit_image("a calm harbour", model="tiny-sd", steps=2, seed=2).result(timeout=60)
    assert served.state is JobState.COMPLETED and served.miner == wallet.address and miner.poll() is None

    spec = _short(4.0)
    started = time.monotonic()
    hung = client.submit_params(spec, image_params(spec, f"{HANG_MARK} a lighthouse", steps=2, seed=3))
    assert miner.wait(30) == EXIT_HUNG
    exited = time.monotonic() - started
    wait_until(lambda: bool(_reports(client, hung.id)), 30, "the hard time limit report")
    [report] = _reports(client, hung.id)
    print(f"\nhung job: the miner exited {exited:.1f} s after the submission; reported: {report}")
    assert report.startswith(f"hard time limit: job {hung.id}: the model call was still running ")
    assert 4.0 + 2.0 <= exited < 4.0 + 2.0 + 10.0  # deadline + grace, then the report and the exit
    with pytest.raises(JobFailedError) as caught:
        hung.result(timeout=30)
    assert (caught.value.public or "").endswith("miners reported: the model hung past the job's hard time limit")

    if hasattr(network, "restarts"):  # "the worker lives on": its supervisor starts it again
        wait_until(lambda: network.restarts["hanger"] >= 1 and network.procs["hanger"].poll() is None, 30,
                   "the supervisor to restart the miner")
    honest = network.start_miner(["tiny-sd"], name="honest")
    def honest_alive() -> None:
        assert network.procs["honest"].poll() is None, "the honest miner exited"

    wait_until(lambda: client.ledger.is_registered(honest.address), 120, "the honest miner to register",
               check=honest_alive)
    after = client.submit_image("a harbour at night", model="tiny-sd", steps=2, seed=4).result(timeout=60)
    assert after.state is JobState.COMPLETED
    view = client.ledger.job(hung.id)
    assert view is not None and view.state is JobState.FAILED and client.ledger.points_entries(hung.id) == 0
    assert len(_reports(client, hung.id)) == 1  # its requeued message was refused as expired, not run again
