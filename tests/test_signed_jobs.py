"""Signed job messages and signed failure reports, without a broker: the signatures (EIP-712, ``heurist.signing``),
the dispatch key (``heurist.dispatch``), the miner's admission checks (``workers.miner.admission``) and the
ledger's check of failure reports (``heurist.ledger.failures``, on SQLite and PostgreSQL)."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from heurist.catalog import Catalog
from heurist.dispatch import KEY_FILE, DispatchSigner, dispatch_signer
from heurist.errors import ConfigError, JobRefused
from heurist.identity import Wallet, recover_signer
from heurist.jobs import (
    Failure,
    ImageParams,
    JobMessage,
    JobState,
    SignedFailure,
    SignedJob,
    TextParams,
    canonical_json,
)
from heurist.ledger.audit_service import AuditLedger
from heurist.ledger.service import Ledger
from heurist.ledger.tables import Reason
from heurist.settings import Settings
from heurist.signing import failure_signer, job_signer, sign_failure, sign_job
from tests.fixtures.ledger import Clock, image_job
from workers.miner.admission import Admission, Origin

STORE = "http://127.0.0.1:8333"
NOW = 1_800_000_000.0


def _settings(tmp_path: Path, **values: Any) -> Settings:
    return Settings(_env_file=None, data_dir=tmp_path, **values)  # type: ignore[call-arg]


def _job(**changes: Any) -> JobMessage:
    values: dict[str, Any] = {
        "job_id": "job-1", "model_id": "tiny-sd",
        "params": ImageParams(prompt="a lighthouse", width=64, height=64, steps=8, guidance=7.5, seed=1),
        "output_url": f"{STORE}/heurist-outputs/outputs/tiny-sd/job-1.png?X-Amz-Signature=abc",
        "deadline_at": NOW + 60.5}
    return JobMessage(**{**values, **changes})


@pytest.fixture(scope="module")
def dispatcher() -> DispatchSigner:
    return DispatchSigner(Wallet.create())


@pytest.fixture
def admission(dispatcher: DispatchSigner, catalog: Catalog) -> Admission:
    return Admission(dispatcher.address, Origin.of(STORE), {m: catalog[m] for m in ("tiny-sd", "smollm2-135m")},
                     clock=lambda: NOW)


# ---------------------------------------------------------------------------------------------- signatures


@pytest.mark.parametrize("change", [
    {"job_id": "victim-job"},
    {"model_id": "sd15"},
    {"params": ImageParams(prompt="the attacker's prompt", width=64, height=64, steps=8, guidance=7.5, seed=1)},
    {"params": ImageParams(prompt="a lighthouse", width=256, height=256, steps=8, guidance=7.5, seed=1)},
    {"output_url": "http://127.0.0.1:9999/steal"},
    {"deadline_at": NOW + 3600},
    {"stream": True, "stream_key": "ab" * 32},
])
def test_a_changed_field_breaks_the_job_signature(dispatcher: DispatchSigner, change: dict[str, Any]) -> None:
    signed = dispatcher.sign(_job())
    assert job_signer(signed) == dispatcher.address
    tampered = SignedJob(job=signed.job.model_copy(update=change), signature=signed.signature)
    assert job_signer(tampered) != dispatcher.address


def test_a_job_signature_survives_the_json_round_trip(dispatcher: DispatchSigner) -> None:
    """What the miner parses (kombu's JSON) rebuilds the very bytes the dispatcher signed, floats included."""
    signed = dispatcher.sign(_job(deadline_at=NOW + 1 / 3))
    again = SignedJob.model_validate_json(signed.model_dump_json())
    assert job_signer(again) == dispatcher.address


def test_an_eip191_signature_is_never_a_job_signature(dispatcher: DispatchSigner) -> None:
    """A ``personal_sign`` (EIP-191) of the job's very bytes, as a dApp may ask a wallet to make, does not make
    a job signature, and the reverse holds too."""
    job = _job()
    personal = dispatcher.wallet.sign(canonical_json(job))
    assert recover_signer(canonical_json(job), personal) == dispatcher.address  # valid as EIP-191 ...
    assert job_signer(SignedJob(job=job, signature=personal)) != dispatcher.address  # ... never as a job
    typed = dispatcher.sign(job).signature
    assert recover_signer(canonical_json(job), typed) != dispatcher.address


def test_a_failure_signature_is_never_a_job_signature() -> None:
    """One key, two primary types: a miner's signed failure report does not sign a job, nor the reverse."""
    wallet = Wallet.create()
    job = _job()
    failure = Failure(job_id=job.job_id, miner=wallet.address, error="boom", failed_at=NOW)
    report = sign_failure(wallet, failure)
    assert failure_signer(report) == wallet.address
    assert job_signer(SignedJob(job=job, signature=report.signature)) != wallet.address
    assert failure_signer(SignedFailure(failure=failure, signature=sign_job(wallet, job).signature)) != wallet.address


# ------------------------------------------------------------------------------------------- dispatch key


def test_the_dispatch_key_file_is_made_once_owner_only(tmp_path: Path) -> None:
    first = dispatch_signer(_settings(tmp_path))
    path = tmp_path / KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert dispatch_signer(_settings(tmp_path)).address == first.address  # the same key on every start
    assert [p.name for p in tmp_path.iterdir()] == [KEY_FILE]  # no temporary file left behind
    os.chmod(path, 0o640)
    with pytest.raises(ConfigError, match=f"chmod 600 {path}"):
        dispatch_signer(_settings(tmp_path))


def test_a_configured_dispatch_key_wins_and_a_bad_one_names_the_variable(tmp_path: Path) -> None:
    wallet = Wallet.create()
    assert dispatch_signer(_settings(tmp_path, dispatch_key=wallet.key_hex)).address == wallet.address
    assert not (tmp_path / KEY_FILE).exists()
    with pytest.raises(ConfigError, match="HEURIST_DISPATCH_KEY"):
        dispatch_signer(_settings(tmp_path, dispatch_key="0x1234"))


# ---------------------------------------------------------------------------------------------- admission


def test_a_genuine_job_is_admitted(admission: Admission, dispatcher: DispatchSigner) -> None:
    signed = dispatcher.sign(_job())
    assert admission.admit(signed.model_dump(mode="json")) == signed.job


def _refusal(admission: Admission, payload: Any) -> str:
    with pytest.raises(JobRefused) as refused:
        admission.admit(payload)
    return refused.value.reason


def test_unsigned_forged_and_malformed_messages_are_refused(admission: Admission, dispatcher: DispatchSigner) -> None:
    job = _job()
    assert _refusal(admission, job.model_dump(mode="json")) == "malformed"  # a bare JobMessage, as before
    assert _refusal(admission, {**dispatcher.sign(job).model_dump(mode="json"), "link": "x"}) == "malformed"
    assert _refusal(admission, "job-1") == "malformed"
    forged = sign_job(Wallet.create(), job)  # anyone can sign: only the dispatcher's key counts
    assert _refusal(admission, forged.model_dump(mode="json")) == "bad_signature"
    assert _refusal(admission, {"job": job.model_dump(mode="json"), "signature": "0x" + "00" * 65}) == "bad_signature"


@pytest.mark.parametrize(("change", "reason"), [
    ({"deadline_at": NOW - 0.5}, "expired"),
    ({"model_id": "sd15"}, "not_served"),
    ({"params": ImageParams(prompt="big", width=512, height=512, steps=8, guidance=7.5, seed=1)}, "out_of_limits"),
    ({"params": ImageParams(prompt="long", width=64, height=64, steps=51, guidance=7.5, seed=1)}, "out_of_limits"),
    ({"model_id": "smollm2-135m", "params": TextParams(prompt="count", max_tokens=1050)}, "out_of_limits"),
    ({"model_id": "smollm2-135m", "params": TextParams(prompt="x" * 4001, max_tokens=8)}, "out_of_limits"),
    ({"model_id": "smollm2-135m"}, "out_of_limits"),  # image parameters for a text model
    ({"output_url": "http://127.0.0.1:9999/heurist-outputs/x.png"}, "foreign_store"),
    ({"output_url": "http://evil.example:8333/heurist-outputs/x.png"}, "foreign_store"),
    ({"output_url": "https://127.0.0.1:8333/heurist-outputs/x.png"}, "foreign_store"),
    ({"output_url": "http://127.0.0.1:8333@evil.example/heurist-outputs/x.png"}, "foreign_store"),
    ({"output_url": "file:///etc/passwd"}, "foreign_store"),
])
def test_signed_jobs_outside_the_rules_are_refused(admission: Admission, dispatcher: DispatchSigner,
                                                   change: dict[str, Any], reason: str) -> None:
    """Even the dispatcher's signature does not carry a job past the deadline, the catalog or the store."""
    assert _refusal(admission, dispatcher.sign(_job(**change)).model_dump(mode="json")) == reason


def test_the_same_signed_message_runs_once_and_a_redispatched_one_again(admission: Admission,
                                                                       dispatcher: DispatchSigner) -> None:
    signed = dispatcher.sign(_job()).model_dump(mode="json")
    admission.admit(signed)
    assert _refusal(admission, signed) == "replayed"
    again = dispatcher.sign(_job(output_url=f"{STORE}/heurist-outputs/outputs/tiny-sd/job-1.png?X-Amz-Signature=new"))
    assert admission.admit(again.model_dump(mode="json")).job_id == "job-1"  # the ledger's redispatch: a new URL


def test_the_store_check_follows_the_endpoint_path_and_default_ports() -> None:
    assert Origin.of("https://s3.example.net").holds("https://S3.example.net:443/bucket/key?sig=1")
    assert not Origin.of("https://s3.example.net").holds("https://s3.example.net:8443/bucket/key")
    assert Origin.of("http://gw.example/s3").holds("http://gw.example/s3/bucket/key")
    assert not Origin.of("http://gw.example/s3").holds("http://gw.example/s3evil/bucket/key")


def test_a_miner_without_the_dispatch_address_or_the_store_does_not_start(tmp_path: Path,
                                                                         dispatcher: DispatchSigner) -> None:
    with pytest.raises(ConfigError, match=r"HEURIST_DISPATCH_ADDRESS .*add-miner"):
        Admission.from_settings(_settings(tmp_path, s3_endpoint=STORE), [])
    with pytest.raises(ConfigError, match="HEURIST_S3_ENDPOINT"):
        Admission.from_settings(_settings(tmp_path, dispatch_address=dispatcher.address), [])
    ready = Admission.from_settings(_settings(tmp_path, dispatch_address=dispatcher.address, s3_endpoint=STORE), [])
    assert ready.store == Origin("http", "127.0.0.1", 8333, "")


# ------------------------------------------------------------------------------ the ledger's failure reports


def _report(wallet: Wallet, job_id: str, *, miner: str | None = None) -> SignedFailure:
    return sign_failure(wallet, Failure(job_id=job_id, miner=miner or wallet.address, error="RuntimeError: boom",
                                        failed_at=time.time()))


def test_only_a_registered_miners_signed_failure_is_believed_and_none_ends_the_job(
        ledger: Ledger, catalog: Catalog, clock: Clock, miner: Wallet) -> None:
    job = image_job(ledger, catalog, clock)
    stranger = Wallet.create()
    assert not ledger.report_failure(_report(stranger, job.id))  # never sent a hello
    assert not ledger.report_failure(_report(stranger, job.id, miner=miner.address))  # names another miner
    forged = _report(miner, job.id).model_copy(update={"failure": Failure(
        job_id=job.id, miner=miner.address, error="changed", failed_at=time.time())})
    assert not ledger.report_failure(forged)  # the signed text was changed
    banned = Wallet.create()
    from tests.fixtures.ledger import register

    assert register(ledger, banned).accepted
    AuditLedger(ledger.engine).ban(banned.address, "test: failed audits")
    assert not ledger.report_failure(_report(banned, job.id))
    view = ledger.reader.job(job.id)
    assert view is not None and view.state is JobState.QUEUED
    assert ledger.reader.rejections(job.id) == []  # refused reports are logged, never stored
    assert ledger.report_failure(_report(miner, job.id))  # believed: held against its signer ...
    view = ledger.reader.job(job.id)
    assert view is not None and view.state is JobState.QUEUED and view.error is None  # ... the job stays open
    assert ledger.reader.rejections(job.id) == [(Reason.FAILURE_REPORTED, miner.address)]
    ledger.record_failure(job.id, "the trusted side ended it")
    assert not ledger.report_failure(_report(miner, job.id))  # about a job no longer open: not kept
    assert ledger.reader.rejections(job.id) == [(Reason.FAILURE_REPORTED, miner.address)]
