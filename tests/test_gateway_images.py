"""The REST gateway's image API on a live network (issue 5 items 1, 2, 5): charging, 402 before any job
is sent, auth, field-naming 422s, job status, 504 with the job id, rate limits, and a schemathesis run."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings

from heurist.client import Client
from heurist.credits.ledger import CreditLedger
from heurist.credits.pricing import price_units
from heurist.embedded import EmbeddedNetwork
from heurist.gateway.app import create_app
from heurist.ledger.audit_service import AuditLedger
from heurist.ledger.jobbook import JobBook
from heurist.ledger.tables import AuditReason
from heurist.submission import image_params

PNG = b"\x89PNG\r\n\x1a\n"
TINY = {"prompt": "a red circle", "model": "tiny-sd", "width": 64, "height": 64, "steps": 8}


@pytest.fixture(scope="module")
def credits(client: Client) -> CreditLedger:
    return CreditLedger(client.ledger.engine)


def _app(network: EmbeddedNetwork, client: Client, credits: CreditLedger, **overrides: Any) -> FastAPI:
    return create_app(network.settings().model_copy(update=overrides), client, credits)


@pytest.fixture(scope="module")
def api(network: EmbeddedNetwork, client: Client, credits: CreditLedger, miner_address: str) -> Iterator[TestClient]:
    with TestClient(_app(network, client, credits, gateway_rate_per_minute=1000)) as tc:
        yield tc


def _key(credits: CreditLedger, units: float) -> tuple[int, dict[str, str]]:
    key_id, plaintext = credits.create_key("gateway-test", units)
    return key_id, {"Authorization": f"Bearer {plaintext}"}


def _price(client: Client, **params: Any) -> float:
    spec = client.catalog[params["model"]]
    return price_units(spec, image_params(spec, params["prompt"], width=params["width"], height=params["height"],
                                          steps=params["steps"], seed=0))


def test_images_charged_exact_units(api: TestClient, client: Client, credits: CreditLedger) -> None:
    key_id, headers = _key(credits, 10)
    resp = api.post("/v1/images/generations", json={**TINY, "n": 2, "seed": 7}, headers=headers)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    expected = 2 * _price(client, **TINY)
    assert body["units_charged"] == pytest.approx(expected)
    assert credits.balance(key_id) == pytest.approx(10 - expected)
    assert credits.balance(key_id) == credits.entries_total(key_id)
    assert [d["seed"] for d in body["data"]] == [7, 8]
    for item in body["data"]:
        assert requests.get(item["url"], timeout=10).content.startswith(PNG)

    resp = api.post("/v1/images/generations", json={**TINY, "response_format": "b64_json"}, headers=headers)
    assert resp.status_code == 200, resp.text
    assert base64.b64decode(resp.json()["data"][0]["b64_json"]).startswith(PNG)


def test_overdraw_refused_with_nothing_enqueued(api: TestClient, client: Client, credits: CreditLedger) -> None:
    price = _price(client, **TINY)
    key_id, headers = _key(credits, price * 1.5)  # pays for the first of two images, not the second
    start, before = credits.balance(key_id), sum(client.ledger.totals().jobs.values())
    resp = api.post("/v1/images/generations", json={**TINY, "n": 2}, headers=headers)
    assert resp.status_code == 402, resp.text
    assert resp.json()["error"]["type"] == "insufficient_credits"
    assert sum(client.ledger.totals().jobs.values()) == before
    assert credits.balance(key_id) == start  # the first reservation was refunded
    assert credits.balance(key_id) == credits.entries_total(key_id)


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer hk_wrong"}, {"Authorization": "Basic x"}])
def test_unauthorized(api: TestClient, headers: dict[str, str]) -> None:
    resp = api.post("/v1/images/generations", json=TINY, headers=headers)
    assert resp.status_code == 401
    assert set(resp.json()["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize(("change", "status", "field"), [
    ({"width": 63}, 422, "width"), ({"height": 1000}, 422, "height"), ({"steps": 0}, 422, "steps"),
    ({"prompt": ""}, 422, "prompt"), ({"model": "nope"}, 404, "model"), ({"model": "smollm2-135m"}, 422, "model"),
    ({"n": 9}, 422, "n"), ({"colour": "red"}, 422, "colour"),
])
def test_validation_names_the_field(api: TestClient, credits: CreditLedger, change: dict[str, Any], status: int,
                                    field: str) -> None:
    key_id, headers = _key(credits, 10)
    resp = api.post("/v1/images/generations", json={**TINY, **change}, headers=headers)
    assert resp.status_code == status, resp.text
    assert resp.json()["error"]["param"] == field
    assert credits.balance(key_id) == 10


def test_job_status(api: TestClient, credits: CreditLedger) -> None:
    _, headers = _key(credits, 10)
    job_id = api.post("/v1/images/generations", json=TINY, headers=headers).json()["data"][0]["job_id"]
    resp = api.get(f"/v1/jobs/{job_id}", headers=headers)
    assert resp.status_code == 200, resp.text
    job = resp.json()
    assert (job["state"], job["model"], job["kind"]) == ("completed", "tiny-sd", "image")
    assert "points" not in job and "miner" not in job
    assert requests.get(job["url"], timeout=10).content.startswith(PNG)
    assert api.get("/v1/jobs/not-a-job", headers=headers).status_code == 404
    _, other = _key(credits, 0)
    assert api.get(f"/v1/jobs/{job_id}", headers=other).status_code == 404  # another key's job


def test_rate_limit(network: EmbeddedNetwork, client: Client, credits: CreditLedger, miner_address: str) -> None:
    _, headers = _key(credits, 0)
    with TestClient(_app(network, client, credits, gateway_rate_per_minute=2)) as tc:
        assert [tc.get("/v1/jobs/x", headers=headers).status_code for _ in range(3)] == [404, 404, 429]
        resp = tc.get("/v1/jobs/x", headers=headers)
        assert resp.status_code == 429 and int(resp.headers["Retry-After"]) >= 1


def test_schemathesis_finds_no_server_error(api: TestClient, credits: CreditLedger) -> None:
    """Every operation fuzzed with a valid key that cannot pay: 402s and 4xx are fine, a 5xx is not."""
    _, headers = _key(credits, 0)
    assert api.get("/openapi.json").status_code == 200
    schema = schemathesis.openapi.from_asgi("/openapi.json", api.app)
    for result in schema.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]  # an Err would raise here, failing the test

        @given(case=operation.as_strategy())
        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None,
                  derandomize=True)  # the same examples every run: CI must not flake
        def check(case: Any) -> None:
            resp = case.call(headers=headers)
            assert resp.status_code < 500, (case.path, case.body, resp.status_code, resp.text)

        check()


def test_timeout_answers_504_with_the_job_id(api: TestClient, client: Client, credits: CreditLedger) -> None:
    key_id, headers = _key(credits, 100)
    big = {**TINY, "width": 128, "height": 128, "steps": 30, "timeout_s": 0.3}  # ~4 s of work: quick to drain
    started = time.monotonic()
    resp = api.post("/v1/images/generations", json=big, headers=headers)
    assert resp.status_code == 504, resp.text
    assert time.monotonic() - started < 5  # answered at the timeout, not held open
    error = resp.json()["error"]
    [job_id] = error["job_ids"]
    assert job_id in error["message"]
    assert credits.balance(key_id) == pytest.approx(100 - _price(client, **big))  # kept: the job runs on
    assert api.get(f"/v1/jobs/{job_id}", headers=headers).json()["state"] in ("queued", "completed")


def test_a_failed_job_names_no_miner_to_its_client(api: TestClient, client: Client, credits: CreditLedger,
                                                   miner_address: str) -> None:
    """Issue 13, finding 8: the recorded error names the miner (and whatever it reported); the job's status and
    the API's errors say only how the job ended."""
    key_id, headers = _key(credits, 100)
    slow = {**TINY, "width": 128, "height": 128, "steps": 30, "timeout_s": 0.3}  # still running when it fails
    job_id = api.post("/v1/images/generations", json=slow, headers=headers).json()["error"]["job_ids"][0]
    internal = f"miner {miner_address} reported: CUDA out of memory writing to http://10.0.0.5:8333/outputs"
    JobBook(client.ledger.engine).record_failure(job_id, internal)  # as the ledger records a miner's report
    job = api.get(f"/v1/jobs/{job_id}", headers=headers).json()
    assert job["state"] == "failed" and job["error"] == f"job {job_id} ended failed: no miner delivered a " \
        "verified result before the job's deadline"
    view = client.ledger.job(job_id)
    assert view is not None and view.error == internal  # kept for the operator
    assert credits.balance(key_id) == pytest.approx(100)  # refunded


def test_storage_and_config_errors_name_no_host_or_bucket() -> None:
    from heurist.errors import ConfigError, JobFailedError, StorageError, public_failure
    from heurist.gateway.errors import from_heurist

    storage = from_heurist(StorageError("S3 put_object at http://10.0.0.5:8333 failed: NoSuchBucket heurist-prod"))
    assert (storage.status, storage.code) == (503, "storage_unavailable")
    assert "10.0.0.5" not in storage.message and "heurist-prod" not in storage.message
    config = from_heurist(ConfigError("HEURIST_S3_SECRET_KEY is missing for http://minio.internal:9000"))
    assert config.status == 500 and "minio" not in config.message
    failed = from_heurist(JobFailedError("job j ended rejected: miner 0xabc sent bad bytes",
                                         public=public_failure("j", "rejected")))
    assert failed.status == 502 and "0xabc" not in failed.message and failed.message.startswith("job j ended rejected")


def test_a_failed_audit_is_shown_refunded_and_not_served(api: TestClient, client: Client,
                                                         credits: CreditLedger) -> None:
    key_id, headers = _key(credits, 10)
    job_id = api.post("/v1/images/generations", json=TINY, headers=headers).json()["data"][0]["job_id"]
    before = api.get(f"/v1/jobs/{job_id}", headers=headers).json()
    assert before["state"] == "completed" and before["url"] and before["audit"] is None and not before["refunded"]
    assert credits.balance(key_id) == pytest.approx(10 - _price(client, **TINY))
    AuditLedger(client.ledger.engine).record_audit(job_id, False, AuditReason.IMAGE_MISMATCH, "replay differs",
                                                   auditor="test")
    after = api.get(f"/v1/jobs/{job_id}", headers=headers).json()
    assert (after["state"], after["audit"], after["refunded"], after["url"]) == ("completed", "failed", True, None)
    assert credits.balance(key_id) == pytest.approx(10)
