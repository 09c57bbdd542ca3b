"""Storage blips (issue 14, item 5): the miner's upload retries over the job's remaining time, not 1.4 s; a job
whose uploads all fail is reported as a storage failure, re-sent within budget, and its client reads the reason.

Real SeaweedFS throughout: a dedicated server on a fixed S3 port is stopped and started again under an upload
in flight; the network test cuts one miner's path to the store (its HTTP proxy is a closed port) while the
trusted side reaches it as usual.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from kombu.exceptions import OperationalError
from sqlalchemy import select

from heurist.catalog import load_catalog
from heurist.catalog.schema import Deadline
from heurist.client import Client
from heurist.db.engine import session_scope
from heurist.embedded import EmbeddedNetwork, wait_until
from heurist.errors import FailureKind, JobFailedError, StorageError, public_failure
from heurist.identity import Wallet
from heurist.jobs import ImageParams, JobMessage, JobState
from heurist.ledger.sweep import never_completed
from heurist.ledger.tables import Rejection
from heurist.settings import Settings
from heurist.storage.backends.s3 import S3ObjectStore
from heurist.storage.presigned import UploadRefusedError, put_presigned
from heurist.storage.seaweed import SeaweedServer, free_ports
from heurist.submission import image_params

PNG = b"\x89PNG\r\n\x1a\n" + os.urandom(4096)
OUTAGE_S = 10.0
SHORT_DEADLINE_S = 6.0


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_an_upload_rides_out_a_storage_outage(tmp_path: Path) -> None:
    """SeaweedFS stops before the upload and is back 10 s later on the same port: the old 4 tries over 1.4 s
    failed; now the upload keeps trying within its deadline and stores the bytes."""
    server = SeaweedServer(tmp_path / "s3", access_key="outage", secret_key=secrets.token_urlsafe(16),
                           s3_port=free_ports(1)[0], stop_grace_s=1.0)
    with server:
        settings = Settings(_env_file=None, s3_endpoint=server.endpoint, s3_access_key=server.access_key,  # type: ignore[call-arg, arg-type]
                            s3_secret_key=server.secret_key, s3_bucket="outage")
        store = S3ObjectStore.from_settings(settings)
        store.ensure_bucket()
        url = store.presign_put("outputs/tiny-sd/blip.png", 120)
        server.stop()
        outcome: dict[str, Any] = {}

        def upload() -> None:
            try:
                outcome["sha256"] = put_presigned(url, PNG, "image/png", deadline_at=time.time() + 90)
            except Exception as err:  # reported to the test below
                outcome["error"] = err

        started = time.monotonic()
        thread = threading.Thread(target=upload)
        thread.start()
        time.sleep(OUTAGE_S)
        assert thread.is_alive(), outcome  # still trying after 10 s
        server.start()  # same data dir, same S3 port: the presigned URL is valid again
        thread.join(90)
        took = time.monotonic() - started
        print(f"\nupload stored {took:.1f} s after it began, {OUTAGE_S:.0f} s of it with the store down")
        assert outcome.get("sha256") == sha(PNG), outcome
        info = store.stat("outputs/tiny-sd/blip.png")
        assert info is not None and info.sha256 == sha(PNG)
        assert took >= OUTAGE_S


def test_an_upload_gives_up_at_its_deadline_with_the_storage_reason() -> None:
    dead = f"http://127.0.0.1:{free_ports(1)[0]}/bucket/outputs/tiny-sd/j.png?X-Amz-Signature=secret"
    started = time.monotonic()
    with pytest.raises(StorageError) as caught:
        put_presigned(dead, PNG, "image/png", deadline_at=time.time() + 4.0)
    took = time.monotonic() - started
    message = str(caught.value)
    assert 2.0 <= took <= 4.0, took  # the window ends 1 s before the deadline
    assert message.startswith(f"upload to {dead.split('?')[0]} failed after ")
    tries = int(message.split("failed after ")[1].split(" ")[0])
    assert 4 <= tries <= 12 and "(ConnectionError)" in message and "secret" not in message
    assert FailureKind.text(caught.value).startswith("storage: upload to http://127.0.0.1:")


def test_a_refused_upload_fails_at_once_whatever_the_deadline(object_store: S3ObjectStore) -> None:
    url = object_store.presign_put("outputs/k.png", 60).replace("X-Amz-Signature=", "X-Amz-Signature=0")
    started = time.monotonic()
    with pytest.raises(UploadRefusedError, match="403"):
        put_presigned(url, PNG, "image/png", deadline_at=time.time() + 120)
    assert time.monotonic() - started < 3


def test_the_runtime_reports_a_storage_failure_as_such(object_store: S3ObjectStore,
                                                       shared_models_dir: Path) -> None:
    """The miner's own path: the model runs, the upload to a store that is gone fails at the deadline, and the
    signed report says "storage: …"."""
    from workers.miner.device import detect_device
    from workers.miner.pipelines import load_pipeline
    from workers.miner.runtime import MinerRuntime

    spec = load_catalog()["tiny-sd"]
    runtime = MinerRuntime(wallet=Wallet.create(), device=detect_device("cpu").info,
                           pipelines={"tiny-sd": load_pipeline(spec, detect_device("cpu"), shared_models_dir)})
    gone = f"http://127.0.0.1:{free_ports(1)[0]}/b/outputs/tiny-sd/x.png?X-Amz-Signature=s"
    job = JobMessage(job_id=str(uuid.uuid4()), model_id="tiny-sd", output_url=gone, deadline_at=time.time() + 8,
                     params=ImageParams(prompt="a boat", width=64, height=64, steps=2, guidance=7.5, seed=1))
    with pytest.raises(StorageError) as caught:
        runtime.execute(job)
    report = runtime.failure(job, caught.value).failure
    assert report.error.startswith("storage: upload to http://127.0.0.1:") and " failed after " in report.error
    assert FailureKind.of(report.error) is FailureKind.STORAGE
    broker = runtime.failure(job, OperationalError("[Errno 111] Connection refused")).failure.error
    assert broker == "broker: [Errno 111] Connection refused"
    assert runtime.failure(job, RuntimeError("CUDA out of memory")).failure.error == "RuntimeError: CUDA out of memory"


def test_clients_read_the_kind_of_failure_never_its_details() -> None:
    recorded = never_completed(2, 3, "storage: upload to http://10.0.0.5:8333/heurist-prod/outputs/x.png failed "
                                     "after 9 attempts over 40.2 s (ConnectionError)")
    public = public_failure("j", "failed", recorded)
    assert public == "job j ended failed: no miner delivered a verified result before the job's deadline; miners " \
                     "reported: the output store could not be reached"
    assert public_failure("j", "failed", never_completed(1, 1, "hard time limit: job j: …")).endswith(
        "miners reported: the model hung past the job's hard time limit")
    for unknown in (never_completed(2, 1, "RuntimeError: CUDA OOM at 0x7f"), "storage: but not a report", None):
        assert public_failure("j", "failed", unknown) == public_failure("j", "failed")  # nothing of it shown


@pytest.fixture(scope="module")
def network_settings() -> dict[str, Any]:
    """One re-send and a fast sweep, so a job whose uploads all fail ends within seconds; no audits."""
    return {"job_resends": 1, "sweep_grace_s": 1.0, "sweep_interval_s": 0.5, "audit_base_rate": 0.0,
            "audit_new_miner_rate": 0.0, "audit_suspicious_rate": 0.0}


def test_a_job_whose_uploads_all_fail_ends_failed_with_the_reason(network: EmbeddedNetwork, client: Client,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The miner cannot reach the store (its HTTP proxy is a closed port); the ledger and the client can. Each
    try retries until the deadline, reports "storage: …", the ledger re-sends once, then fails the job; the
    client's error names storage as the cause, and no host or URL."""
    def own_broker_url(address: str) -> str:
        with monkeypatch.context() as direct:  # this process reaches the management API as before
            direct.delenv("HTTP_PROXY")
            url = network.own_broker_url(address)
        assert url is not None
        return url

    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_ports(1)[0]}")
    for name in ("NO_PROXY", "no_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    wallet = network.start_miner(["tiny-sd"], name="cut-off", broker_url=own_broker_url)
    monkeypatch.undo()  # only that miner lost its way to the store
    wait_until(lambda: client.ledger.is_registered(wallet.address), 120, "the miner to register",
               check=network.check_alive)
    spec = load_catalog()["tiny-sd"].model_copy(update={"deadline": Deadline(base_s=SHORT_DEADLINE_S, per_unit_s=0)})
    started = time.monotonic()
    handle = client.submit_params(spec, image_params(spec, "a lighthouse", steps=2, seed=5))
    with pytest.raises(JobFailedError) as caught:
        handle.result(timeout=60)
    took = time.monotonic() - started
    view = client.ledger.job(handle.id)
    assert view is not None and view.state is JobState.FAILED and view.resends == 1
    with session_scope(client.ledger.engine) as session:
        reports = list(session.scalars(select(Rejection.detail).where(Rejection.job_id == handle.id)))
    print(f"\nfailed {took:.1f} s after submission; recorded: {view.error}\nclients read: {caught.value.public}")
    assert len(reports) == 2 and all(r.startswith("storage: upload to http://") for r in reports), reports
    assert view.error is not None and "; last report: storage: upload to http://127.0.0.1:" in view.error
    assert str(caught.value) == f"job {handle.id} ended failed: {view.error}"  # the operator's whole reason
    public = caught.value.public or ""
    assert public.endswith("miners reported: the output store could not be reached"), public
    assert "127.0.0.1" not in public and "http" not in public and wallet.address not in public
    assert took < 2 * SHORT_DEADLINE_S + 10  # two tries of the deadline, then the sweep's grace
    assert client.ledger.points_entries(handle.id) == 0
    network.check_alive()
