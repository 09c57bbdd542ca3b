"""One job from client to miner to S3 to ledger, on RabbitMQ + PostgreSQL + SeaweedFS.

The ledger and the miner run as real `heurist` processes; the miner's environment holds only the broker
URL and its key file.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from heurist.client import Client
from heurist.embedded import EmbeddedNetwork, wait_until
from heurist.jobs import JobState
from heurist.points import job_points
from heurist.signing import sign_message
from heurist.submission import image_params

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HEARTBEAT_S = 0.5


@pytest.fixture(scope="module")
def network_settings() -> dict[str, Any]:
    """Heartbeats every 0.5 s: a miner that stops is shown offline 1.5 s later (3 missed)."""
    return {"heartbeat_interval_s": HEARTBEAT_S}


def test_miner_environment_has_no_trusted_secrets(network: EmbeddedNetwork, client: Client) -> None:
    env = network.miner_env()
    assert "HEURIST_DATABASE_URL" not in env and "HEURIST_S3_SECRET_KEY" not in env
    assert "HEURIST_S3_ACCESS_KEY" not in env and env["HEURIST_BROKER_URL"].startswith("amqp://")
    assert "HEURIST_DISPATCH_KEY" not in env  # miners know the dispatcher's address, never its key
    assert env["HEURIST_DISPATCH_ADDRESS"] == client.signer.address
    assert env["HEURIST_S3_ENDPOINT"] == client.settings.s3_endpoint


def test_image_job_end_to_end(client: Client, miner_address: str) -> None:
    handle = client.submit_image("a lighthouse at dawn", model="tiny-sd", seed=3)
    result = handle.result(timeout=300)
    assert result.state is JobState.COMPLETED and result.miner == miner_address
    png = handle.download()
    assert isinstance(png, bytes) and png.startswith(PNG_MAGIC)
    assert Image.open(io.BytesIO(png)).size == (64, 64)
    view = client.ledger.job(handle.id)
    assert view is not None and view.output_sha256 == hashlib.sha256(png).hexdigest()
    spec = client.catalog["tiny-sd"]
    expected = job_points(spec, image_params(spec, "a lighthouse at dawn", seed=3))
    assert result.points == pytest.approx(expected, abs=1e-6)
    assert result.url is not None and result.url.startswith(client.settings.s3_endpoint or "")


def test_text_job_end_to_end(client: Client, miner_address: str) -> None:
    handle = client.submit_text("Name three primary colors.", model="smollm2-135m", max_tokens=8)
    result = handle.result(timeout=300)
    assert result.state is JobState.COMPLETED
    output = json.loads(handle.download())
    assert output["text"] and 1 <= output["output_tokens"] <= 8
    spec = client.catalog["smollm2-135m"]
    expected = (output["input_tokens"] + output["output_tokens"]) / 1000 * spec.coefficient
    assert result.points == pytest.approx(expected, abs=1e-6)


def test_many_jobs_each_credited_once(client: Client, miner_address: str) -> None:
    from heurist.client import ImageRequest

    results = client.map([ImageRequest("a red fox", "tiny-sd", seed=s, steps=4) for s in range(6)],
                         timeout=300, progress=False)
    assert [r.state for r in results] == [JobState.COMPLETED] * 6
    shas = {client.ledger.job(r.job_id).output_sha256 for r in results}  # type: ignore[union-attr]
    assert len(shas) == 6  # six seeds, six different images
    for r in results:
        assert client.ledger.points_entries(r.job_id) == 1


@pytest.fixture(scope="module")
def in_process_miner(network: EmbeddedNetwork, client: Client, miner_address: str, shared_models_dir: Path):
    """The real miner runtime with tiny-sd, run in this process so a test holds its signed completions."""
    from heurist.identity import Wallet
    from workers.miner.device import detect_device
    from workers.miner.launch import MinerPlan, announce
    from workers.miner.pipelines import load_pipeline
    from workers.miner.runtime import MinerRuntime

    spec = client.catalog["tiny-sd"]
    device = detect_device("cpu")
    wallet = Wallet.create()
    runtime = MinerRuntime(wallet=wallet, device=device.info,
                           pipelines={"tiny-sd": load_pipeline(spec, device, shared_models_dir)})
    announce(client.app, wallet, MinerPlan(device, 8, [spec], []), client.settings.ledger_queue)
    wait_until(lambda: client.ledger.is_registered(wallet.address), 60, "the in-process miner to register")
    return runtime


def _unsent_job(client: Client, seed: int):
    """A job recorded in the ledger but not enqueued, so only the in-process miner does it."""
    from heurist.jobs import JobMessage

    spec = client.catalog["tiny-sd"]
    params = image_params(spec, "a quiet harbour", seed=seed, steps=4)
    job_id = f"manual-{seed}-{id(params)}"
    key = f"outputs/tiny-sd/{job_id}.png"
    client.job_book.create_job(job_id, spec, params, key, spec.queue, deadline_at=10**10)
    return JobMessage(job_id=job_id, model_id=spec.id, params=params, deadline_at=10**10,
                      output_url=client.store.presign_put(key, 600))


def _send_completion(client: Client, signed: dict) -> None:
    from tasks.names import RECORD_COMPLETION

    client.app.send_task(RECORD_COMPLETION, args=[signed], queue=client.settings.ledger_queue)


def test_a_completion_delivered_twice_over_the_broker_credits_once(client: Client, in_process_miner) -> None:
    signed = in_process_miner.execute(_unsent_job(client, 11)).model_dump(mode="json")
    job_id = signed["completion"]["job_id"]
    for _ in range(3):
        _send_completion(client, signed)
    wait_until(lambda: len(client.ledger.rejections(job_id)) == 2, 60, "the duplicates to be seen")
    view = client.ledger.job(job_id)
    assert view is not None and view.state is JobState.COMPLETED
    assert client.ledger.points_entries(job_id) == 1
    assert [r.value for r, _ in client.ledger.rejections(job_id)] == ["duplicate", "duplicate"]


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        ("signature", "bad_signature"),
        ("signer", "unknown_signer"),
        ("sha256", "sha256_mismatch"),
    ],
)
def test_bad_completions_over_the_broker_credit_nothing(client: Client, in_process_miner, tamper: str,
                                                        reason: str) -> None:
    from heurist.identity import Wallet
    from heurist.jobs import Completion, SignedCompletion

    signed = in_process_miner.execute(_unsent_job(client, hash(tamper) % 1000))
    completion = signed.completion
    if tamper == "signature":  # the claim changed after signing
        forged = SignedCompletion(completion=completion.model_copy(update={"output_tokens": 99}),
                                  signature=signed.signature)
    elif tamper == "signer":  # well signed, by a key that never registered
        stranger = Wallet.create()
        claim = Completion.model_validate({**completion.model_dump(), "miner": stranger.address})
        forged = SignedCompletion(completion=claim, signature=sign_message(stranger, claim))
    else:  # the registered miner claims other bytes than it stored
        claim = Completion.model_validate({**completion.model_dump(), "output_sha256": "ab" * 32})
        forged = SignedCompletion(completion=claim, signature=sign_message(in_process_miner.wallet, claim),
                                  output=signed.output)  # the image travels inline: the ledger hashes it
    _send_completion(client, forged.model_dump(mode="json"))
    job_id = completion.job_id
    wait_until(lambda: client.ledger.rejections(job_id), 60, "the ledger's verdict")
    assert [r.value for r, _ in client.ledger.rejections(job_id)] == [reason]
    assert client.ledger.points_entries(job_id) == 0


def _cli(network: EmbeddedNetwork, *args: str) -> dict | list:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "heurist.cli.main", *args], capture_output=True, text=True,
                          timeout=300, env=network.trusted_env())
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_cli_submit_wait_and_points(network: EmbeddedNetwork, client: Client, miner_address: str,
                                    tmp_path: Path) -> None:
    image = _cli(network, "submit", "image", "a boat", "--model", "tiny-sd", "--seed", "9", "--wait", "--json",
                 "--out", str(tmp_path))
    assert isinstance(image, dict) and image["state"] == "completed" and image["miner"] == miner_address
    assert Path(image["file"]).read_bytes().startswith(PNG_MAGIC)
    text = _cli(network, "submit", "text", "Say hi.", "--model", "smollm2-135m", "--max-tokens", "4", "--wait",
                "--json", "--out", str(tmp_path))
    assert isinstance(text, dict) and text["state"] == "completed"
    assert json.loads(Path(text["file"]).read_text())["output_tokens"] <= 4
    points = _cli(network, "points", "--json")
    mine = [row for row in points if row["miner"] == miner_address]  # type: ignore[index, union-attr]
    assert mine and mine[0]["jobs"] >= 2
    ledger = {m.address: m.points for m in client.ledger.miner_points()}
    assert mine[0]["points"] == pytest.approx(ledger[miner_address], abs=1e-6) and mine[0]["points"] > 0


def test_an_output_overwritten_after_crediting_changes_nothing_downloaded(client: Client, miner_address: str) -> None:
    from heurist.errors import JobFailedError

    handle = client.submit_image("a mill", model="tiny-sd", seed=21, steps=2)
    result = handle.result(timeout=300)
    original = handle.download()
    assert isinstance(original, bytes) and original.startswith(PNG_MAGIC)
    # Whoever holds the presigned PUT URL overwrites the object it uploaded: clients read the frozen copy.
    client.store.put(result.output_key, b"not the image the ledger verified", "image/png")
    assert result.stored_key != result.output_key and handle.download() == original
    # Even the frozen copy, changed by someone with the store's keys, is refused rather than served.
    client.store.put(result.stored_key, b"not the image the ledger verified", "image/png")
    with pytest.raises(JobFailedError, match="does not match the sha256 the ledger verified"):
        handle.download()


def test_a_job_that_raises_on_the_miner_is_reported_and_tried_again(client: Client, miner_address: str) -> None:
    """The miner's task raises (here: the store refuses its upload, whose presigned signature is wrong); the miner
    sends a signed failure report. The ledger keeps it against the miner and, since issue 13, never ends the job
    on a miner's word: it sends the job again at once, with a fresh upload URL, and the second try completes.
    The deadline is under the 60 s a miner needs to spare to send its output inline, so it uploads."""
    from heurist.jobs import JobMessage
    from heurist.ledger.tables import Reason

    spec = client.catalog["tiny-sd"]
    params = image_params(spec, "nowhere to put it", seed=1, steps=4)
    job_id = "raises-" + hashlib.sha256(str(id(params)).encode()).hexdigest()[:12]
    key = f"outputs/tiny-sd/{job_id}.png"
    deadline_at = time.time() + 50  # under heurist.jobs.INLINE_MARGIN_S: the miner uploads
    client.job_book.create_job(job_id, spec, params, key, spec.queue, deadline_at=deadline_at)
    url = client.store.presign_put(key, 600).replace("X-Amz-Signature=", "X-Amz-Signature=00")
    client._send(client.signer.sign(JobMessage(job_id=job_id, model_id=spec.id, params=params,
                                               deadline_at=deadline_at, output_url=url)), spec.queue)
    [view] = client.wait_all([job_id], timeout=120)
    assert (view.state, view.miner, view.resends) == (JobState.COMPLETED, miner_address, 1)
    assert client.ledger.rejections(job_id) == [(Reason.FAILURE_REPORTED, miner_address)]
    assert client.ledger.points_entries(job_id) == 1 and client.store.stat(key) is not None


def _presence(network: EmbeddedNetwork, address: str) -> dict[str, Any]:
    rows = _cli(network, "miners", "--json")
    return next(row for row in rows if row["address"] == address)  # type: ignore[index, union-attr]


def test_heartbeats_give_uptime_and_a_stopped_miner_goes_offline(network: EmbeddedNetwork, client: Client,
                                                                  miner_address: str) -> None:
    """A second miner heartbeats over RabbitMQ (its own process and key), then is killed as a power cut would.
    Its heartbeats count once its broker user consumes (``heurist.ledger.serving``): the broker lists a new
    consumer within seconds, later on a busy machine, so the test waits for it rather than a fixed time."""
    wallet = network.start_miner(["tiny-sd"], name="heartbeat-miner")
    wait_until(lambda: client.ledger.is_registered(wallet.address), 300, "the second miner to register",
               check=network.check_alive)
    wait_until(lambda: _presence(network, wallet.address)["presence"] == "online", 60,
               "the second miner to be heard while it consumes", check=network.check_alive)
    row = _presence(network, wallet.address)
    assert row["presence"] == "online" and row["tier"] == "vram8" and row["models"] == ["tiny-sd"]
    assert 0 < row["uptime"] <= 1 and row["device"]
    assert time.time() - row["last_seen"] < 3 * HEARTBEAT_S + 5  # + 5 s: a loaded machine delays the read
    network.kill("heartbeat-miner")
    time.sleep(3 * HEARTBEAT_S + 1)
    assert _presence(network, wallet.address)["presence"] == "offline"
    assert _presence(network, miner_address)["presence"] == "online"  # the first miner heartbeats on
