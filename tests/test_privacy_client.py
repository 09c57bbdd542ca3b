"""Private jobs on the client and the ledger side (issue 16): sealing and opening, what the job record and the
broker hold (no plaintext prompt), the private queue, re-sends that stay sealed, and the ledger's verification of
a private completion: on SQLite and PostgreSQL, real RabbitMQ and SeaweedFS.

The privacy miner and the key-release nodes are played here by their cryptography only (the nodes' X25519 keys
open their shares), since this module tests what the client and the ledger do with a private job.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from amqp.exceptions import NotFound
from celery import Celery
from kombu import Connection
from nacl.public import PrivateKey
from sqlalchemy import Engine, select, text

from heurist.catalog import Catalog, ModelSpec
from heurist.celery_app import create_app
from heurist.client import Client, TextRequest
from heurist.dispatch import DispatchSigner, send_job
from heurist.errors import ConfigError, InvalidJobError
from heurist.identity import Wallet
from heurist.jobs import (
    ImageParams,
    JobMessage,
    JobParams,
    JobState,
    PrivateEnvelope,
    SignedJob,
    TextOutput,
    TextParams,
)
from heurist.ledger.redispatch import redispatch
from heurist.ledger.service import CompletionVerdict, Ledger
from heurist.ledger.sweep import Sweep, SweepPolicy
from heurist.ledger.tables import Reason, Rejection
from heurist.points import job_points, to_micro
from heurist.privacy import acc, envelope
from heurist.privacy import client as privacy
from heurist.privacy.envelope import DecryptionError, PrivacyError, Share
from heurist.privacy.metering import PRIVATE_CONTENT_TYPE, PRIVATE_PROMPT
from heurist.settings import Settings
from heurist.storage.backend import ObjectStore
from tests.fixtures.ledger import PNG, Clock, Job, answer, completion, sign, text_job

SECRET_PROMPT = "Summarise the Zanzibar-417 merger memo"
SECRET_ANSWER = "Orchid-Nine closes on Friday"
TEXT_MODEL, IMAGE_MODEL = "smollm2-135m", "sd15"
GRACE = 10.0


# ------------------------------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def node_keys() -> list[PrivateKey]:
    """Three key-release nodes' X25519 keys (what `heurist keyrelease init` makes)."""
    return [PrivateKey.generate() for _ in range(3)]


def private_settings(data_dir: Path, nodes: list[PrivateKey], threshold: int = 2, **extra: Any) -> Settings:
    listed = [{"url": f"http://127.0.0.1:{8701 + i}", "public_key": bytes(k.public_key).hex()}
              for i, k in enumerate(nodes)]
    return Settings(_env_file=None, data_dir=data_dir, keyrelease_nodes=listed,  # type: ignore[call-arg]
                    keyrelease_threshold=threshold, **extra)


def job_key(sealed: PrivateEnvelope, nodes: list[PrivateKey], which: tuple[int, ...] = (0, 2)) -> bytes:
    """What a privacy miner rebuilds from the shares nodes ``which`` released (each node opens its own)."""
    return envelope.combine([Share.from_json(envelope.open_sealed(nodes[i], sealed.shares[i].sealed))
                             for i in which])


def real_params(sealed: PrivateEnvelope, nodes: list[PrivateKey], job_id: str, model_id: str) -> bytes:
    return envelope.open_params(job_key(sealed, nodes), sealed, job_id=job_id, model_id=model_id)


def private_job(ledger: Ledger, settings: Settings, spec: ModelSpec, params: JobParams, clock: Clock,
                condition: acc.Condition = acc.DEFAULT) -> tuple[Job, PrivateEnvelope]:
    """A private job recorded as the client records it: clear params, the envelope in ``jobs.sealed``."""
    job_id = str(uuid.uuid4())
    clear, sealed = privacy.seal_job(settings, privacy.client_secret(settings), job_id, spec.id, params, condition)
    ext = ".json" if isinstance(params, TextParams) else ".png"
    key, deadline = f"outputs/{spec.id}/{job_id}{ext}", clock.now + 60.0
    ledger.book.create_job(job_id, spec, clear, key, spec.private_queue, deadline, sealed=sealed)
    return Job(job_id, spec, clear, key, deadline), sealed


def deliver_private(ledger: Ledger, store: ObjectStore, job: Job, wallet: Wallet, plain: bytes, data_key: bytes, *,
                    input_tokens: int = 0, output_tokens: int = 0,
                    content_type: str = PRIVATE_CONTENT_TYPE) -> CompletionVerdict:
    """What an honest privacy miner does: encrypt the output to the job's key, PUT only ciphertext, claim it."""
    blob = envelope.encrypt_output(data_key, job.id, plain)
    store.put(job.output_key, blob, PRIVATE_CONTENT_TYPE)
    claim = completion(job, wallet, blob, input_tokens=input_tokens, output_tokens=output_tokens)
    return ledger.record_completion(sign(claim.model_copy(update={"content_type": content_type}), wallet))


def drain(app: Celery, queue: str) -> list[tuple[bytes, JobMessage]]:
    """Every message on ``queue``: its raw body (what the broker holds) and the job it carries."""
    found = []
    with Connection(app.conf.broker_url) as conn:
        channel = conn.default_channel
        try:
            while (raw := channel.basic_get(queue=queue, no_ack=True)) is not None:
                args, _, _ = json.loads(raw.body)
                body = raw.body.encode() if isinstance(raw.body, str) else bytes(raw.body)
                found.append((body, SignedJob.model_validate(args[0]).job))
        except NotFound:  # nothing was ever sent to it
            return []
    return found


def jobs_table_dump(engine: Engine) -> str:
    with engine.connect() as conn:
        return repr([tuple(row) for row in conn.execute(text("SELECT * FROM jobs"))])


@pytest.fixture
def app(rabbit_url: str, tmp_path: Path) -> Iterator[Celery]:
    app = create_app(Settings(_env_file=None, broker_url=rabbit_url, data_dir=tmp_path))  # type: ignore[call-arg]
    yield app
    app.close()


# --------------------------------------------------------------------------------------- sealing, opening


def test_a_sealed_job_opens_with_t_shares_and_its_output_with_the_clients_secret(
        tmp_path: Path, node_keys: list[PrivateKey]) -> None:
    settings = private_settings(tmp_path, node_keys)
    secret, job_id = privacy.client_secret(settings), str(uuid.uuid4())
    params = TextParams(prompt=SECRET_PROMPT, max_tokens=48, temperature=0.7, seed=11)
    clear, sealed = privacy.seal_job(settings, secret, job_id, TEXT_MODEL, params, acc.DEFAULT)
    assert clear == TextParams(prompt=PRIVATE_PROMPT, max_tokens=48, temperature=0.0, seed=0)
    assert sealed.threshold == 2 and [s.node for s in sealed.shares] == [1, 2, 3]
    assert sealed.acc == acc.canonical(acc.DEFAULT) and SECRET_PROMPT not in sealed.model_dump_json()
    data_key = envelope.data_key(secret, job_id)
    for pair in ((0, 1), (1, 2), (0, 2)):  # any 2 of the 3 nodes
        assert job_key(sealed, node_keys, pair) == data_key
    assert TextParams.model_validate_json(real_params(sealed, node_keys, job_id, TEXT_MODEL)) == params
    with pytest.raises(DecryptionError):  # one share is not the key
        envelope.open_params(job_key(sealed, node_keys, (1,)), sealed, job_id=job_id, model_id=TEXT_MODEL)
    out = TextOutput(text=SECRET_ANSWER, input_tokens=9, output_tokens=2, output_token_ids=[5, 6],
                     finish_reason="stop").model_dump_json().encode()
    blob = envelope.encrypt_output(data_key, job_id, out)
    assert privacy.open_output(secret, job_id, blob, text=True) == out
    with pytest.raises(PrivacyError, match="not a text answer"):
        privacy.open_output(secret, job_id, envelope.encrypt_output(data_key, job_id, b"garbage"), text=True)
    with pytest.raises(DecryptionError, match="HEURIST_PRIVACY_CLIENT_KEY"):
        privacy.open_output(os.urandom(32), job_id, blob)


def test_the_client_secret_is_made_once_private_and_a_bad_one_is_named(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path / "d")  # type: ignore[call-arg]
    first = privacy.client_secret(settings)
    path = tmp_path / "d" / privacy.KEY_FILE
    assert len(first) == 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert privacy.client_secret(settings) == first  # the same secret next time: outputs stay readable
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        privacy.client_secret(settings)
    given = Settings(_env_file=None, data_dir=tmp_path, privacy_client_key="ab" * 32)  # type: ignore[call-arg]
    assert privacy.client_secret(given) == bytes.fromhex("ab" * 32)
    bad = Settings(_env_file=None, data_dir=tmp_path, privacy_client_key="not hex")  # type: ignore[call-arg]
    with pytest.raises(ConfigError, match="HEURIST_PRIVACY_CLIENT_KEY"):
        privacy.client_secret(bad)


# ------------------------------------------------------------------------------------------- refusals


def test_private_jobs_need_nodes_a_threshold_they_can_meet_and_no_stream(tmp_path: Path,
                                                                          node_keys: list[PrivateKey]) -> None:
    # The database and the broker point nowhere: every refusal comes before anything is recorded or sent.
    nowhere: dict[str, Any] = {"database_url": f"sqlite:///{tmp_path}/never.sqlite",
                               "broker_url": "amqp://guest:guest@127.0.0.1:1//"}
    bare = Settings(_env_file=None, data_dir=tmp_path / "bare", **nowhere)  # type: ignore[call-arg]
    with pytest.raises(ConfigError) as err:
        Client(bare).submit_text("hi", model=TEXT_MODEL, private=True)
    assert str(err.value) == privacy.NO_NODES
    assert not (tmp_path / "bare" / privacy.KEY_FILE).exists()
    high = private_settings(tmp_path, node_keys, threshold=4, **nowhere)
    with pytest.raises(ConfigError, match=r"HEURIST_KEYRELEASE_THRESHOLD is 4 .* lists 3"):
        Client(high).submit_text("hi", model=TEXT_MODEL, private=True)
    client = Client(private_settings(tmp_path, node_keys, **nowhere))
    with pytest.raises(InvalidJobError, match="stream: private jobs do not stream"):
        client.submit(TextRequest("hi", TEXT_MODEL, private=True), stream_key="ab" * 32)
    with pytest.raises(InvalidJobError, match="acc: only a private job"):
        client.submit_text("hi", model=TEXT_MODEL, acc={"kind": "privacy_enabled"})
    with pytest.raises(acc.AccError, match="value"):
        client.submit_text("hi", model=TEXT_MODEL, private=True, acc={"kind": "min_reputation", "value": 3})
    assert not (tmp_path / "never.sqlite").exists()


def _cli(tmp_path: Path, *args: str, nodes: str = "[]") -> subprocess.CompletedProcess[str]:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("HEURIST_")}, "COLUMNS": "200",
           "HEURIST_DATA_DIR": str(tmp_path / "data"), "HEURIST_BROKER_URL": "amqp://guest:guest@127.0.0.1:1//",
           "HEURIST_DATABASE_URL": f"sqlite:///{tmp_path}/never.sqlite", "HEURIST_S3_ENDPOINT": "http://127.0.0.1:1",
           "HEURIST_KEYRELEASE_NODES": nodes}
    return subprocess.run([sys.executable, "-m", "heurist.cli.main", "submit", *args], capture_output=True,
                          text=True, timeout=120, env=env)


def test_cli_refuses_a_bad_acc_file_and_missing_nodes_clearly(tmp_path: Path, node_keys: list[PrivateKey]) -> None:
    nodes = json.dumps([{"url": "http://127.0.0.1:8701", "public_key": bytes(k.public_key).hex()}
                        for k in node_keys])
    missing = _cli(tmp_path, "text", "hi", "--private", "--acc", str(tmp_path / "none.json"), nodes=nodes)
    assert missing.returncode == 2 and "--acc: cannot read" in missing.stderr
    bad = tmp_path / "acc.json"
    bad.write_text(json.dumps({"kind": "and", "all": [{"kind": "min_reputation", "value": 2}]}))
    done = _cli(tmp_path, "image", "a cat", "--private", "--acc", str(bad), nodes=nodes)
    assert done.returncode == 2 and f"--acc {bad}" in done.stderr.replace("\n", "")
    assert "all.0.value" in done.stderr
    bad.write_text("{not json")
    done = _cli(tmp_path, "text", "hi", "--private", "--acc", str(bad), nodes=nodes)
    assert done.returncode == 2 and "--acc" in done.stderr
    no_nodes = _cli(tmp_path, "text", "hi", "--private")
    assert no_nodes.returncode == 2 and "HEURIST_KEYRELEASE_NODES" in no_nodes.stderr
    assert "heurist keyrelease init" in no_nodes.stderr
    for done in (missing, no_nodes):
        assert "Traceback" not in done.stderr
    assert not (tmp_path / "never.sqlite").exists()
    shown = _cli(tmp_path, "--help")
    assert shown.returncode == 0 and "min_stake" in shown.stdout and "privacy_enabled" in shown.stdout


# ------------------------------------------------------------------------------------- the client, live


def test_a_private_job_is_recorded_and_sent_sealed_and_its_answer_read_in_plaintext(
        ledger: Ledger, object_store: ObjectStore, app: Celery, miner: Wallet, tmp_path: Path,
        node_keys: list[PrivateKey], rabbit_url: str) -> None:
    settings = private_settings(tmp_path, node_keys, broker_url=rabbit_url, result_poll_interval_s=0.05)
    spec = ledger.catalog[TEXT_MODEL]
    client = Client(settings, catalog=ledger.catalog, store=object_store, ledger=ledger.reader, app=app)
    condition = {"kind": "or", "any": [{"kind": "privacy_enabled"}, {"kind": "addresses",
                                                                        "addresses": [miner.address]}]}
    handle = client.submit_text(SECRET_PROMPT, model=TEXT_MODEL, max_tokens=24, seed=3, private=True, acc=condition)
    assert handle.private and handle.queue == spec.private_queue == f"private.{spec.queue}"

    # The job record: billed fields only, the envelope beside them; no plaintext anywhere in the table.
    dump = jobs_table_dump(ledger.engine)
    assert SECRET_PROMPT not in dump and PRIVATE_PROMPT in dump
    sealed = ledger.reader.job_envelope(handle.id)
    assert sealed is not None and sealed.acc == acc.canonical(acc.parse(condition))
    assert ledger.reader.job_params(handle.id) == TextParams(prompt=PRIVATE_PROMPT, max_tokens=24)
    view = ledger.reader.job(handle.id)
    assert view is not None and view.private

    # The broker: the private queue holds it, sealed; the public queue nothing.
    [(body, message)] = drain(app, spec.private_queue)
    assert drain(app, spec.queue) == []
    assert SECRET_PROMPT.encode() not in body and message.private == sealed
    assert message.params == TextParams(prompt=PRIVATE_PROMPT, max_tokens=24)

    # A privacy miner with 2 of the 3 shares runs it and stores only ciphertext.
    real = TextParams.model_validate_json(real_params(sealed, node_keys, handle.id, TEXT_MODEL))
    assert (real.prompt, real.seed) == (SECRET_PROMPT, 3)
    plain = answer(11, 4, SECRET_ANSWER)
    job = Job(handle.id, spec, message.params, handle.output_key, message.deadline_at)
    verdict = deliver_private(ledger, object_store, job, miner, plain, job_key(sealed, node_keys),
                              input_tokens=11, output_tokens=4)
    assert (verdict.accepted, verdict.state) == (True, JobState.COMPLETED)
    assert SECRET_ANSWER.encode() not in object_store.get(handle.output_key)

    result = handle.result(timeout=30)
    assert result.private and result.points == pytest.approx(job_points(spec, real, 11, 4))
    assert handle.download() == plain  # decrypted, transparently
    path = handle.download(tmp_path / "out")
    assert isinstance(path, Path) and json.loads(path.read_text())["text"] == SECRET_ANSWER


# ------------------------------------------------------------------------------------- re-sends stay sealed


def test_the_sweep_and_redispatch_resend_a_private_job_sealed_to_the_private_queue(
        ledger: Ledger, catalog: Catalog, clock: Clock, app: Celery, tmp_path: Path,
        node_keys: list[PrivateKey]) -> None:
    settings = private_settings(tmp_path, node_keys)
    spec = catalog[TEXT_MODEL]
    job, sealed = private_job(ledger, settings, spec, TextParams(prompt=SECRET_PROMPT, max_tokens=16), clock)
    signer = DispatchSigner(Wallet.create())
    sweep = Sweep(ledger, lambda message, queue: send_job(app, signer.sign(message), queue),
                  SweepPolicy(grace_s=GRACE, output_wait_s=100.0, resends=2))
    clock.now = job.deadline_at + GRACE + 0.5
    assert sweep.run_once().resent == [job.id]
    [(body, message)] = drain(app, spec.private_queue)
    assert drain(app, spec.queue) == []  # never on the public queue
    assert message.private == sealed and message.params == job.params and SECRET_PROMPT.encode() not in body
    assert message.deadline_at > job.deadline_at  # a fresh deadline, the same envelope
    assert real_params(message.private, node_keys, job.id, TEXT_MODEL) == \
        TextParams(prompt=SECRET_PROMPT, max_tokens=16).model_dump_json().encode()
    assert sweep.resend_now(job.id)  # a miner's failure report: the same again
    [(_, again)] = drain(app, spec.private_queue)
    assert again.private == sealed and drain(app, spec.queue) == []
    # A banned miner took it: redispatch sends it again, sealed, to the private queue.
    assert redispatch(app, ledger, Settings(_env_file=None, data_dir=tmp_path), job.id)  # type: ignore[call-arg]
    [(_, redone)] = drain(app, spec.private_queue)
    assert redone.private == sealed and drain(app, spec.queue) == []


# ---------------------------------------------------------------------------------------- ledger verification


def test_a_private_text_completion_with_bounded_counts_earns_a_public_jobs_points(
        ledger: Ledger, catalog: Catalog, clock: Clock, object_store: ObjectStore, miner: Wallet, tmp_path: Path,
        node_keys: list[PrivateKey]) -> None:
    settings = private_settings(tmp_path, node_keys)
    spec = catalog[TEXT_MODEL]
    job, sealed = private_job(ledger, settings, spec, TextParams(prompt=SECRET_PROMPT, max_tokens=32), clock)
    verdict = deliver_private(ledger, object_store, job, miner, answer(12, 6, SECRET_ANSWER),
                              job_key(sealed, node_keys), input_tokens=12, output_tokens=6)
    assert (verdict.accepted, verdict.state, verdict.reason) == (True, JobState.COMPLETED, None)
    public = text_job(ledger, catalog, clock, prompt=SECRET_PROMPT, max_tokens=32)
    data = answer(12, 6, SECRET_ANSWER)
    object_store.put(public.output_key, data, "application/json")
    same = ledger.record_completion(sign(completion(public, miner, data, input_tokens=12, output_tokens=6), miner))
    assert same.accepted and verdict.points_micro == same.points_micro > 0
    assert verdict.points_micro == to_micro(job_points(spec, job.params, 12, 6))
    view = ledger.reader.job(job.id)
    assert view is not None and (view.input_tokens, view.output_tokens) == (12, 6)


def test_a_private_image_completion_earns_a_public_jobs_points(
        ledger: Ledger, catalog: Catalog, clock: Clock, object_store: ObjectStore, miner: Wallet, tmp_path: Path,
        node_keys: list[PrivateKey]) -> None:
    spec = catalog[IMAGE_MODEL]
    params = ImageParams(prompt=SECRET_PROMPT, width=768, height=512, steps=30, guidance=7.5, seed=5)
    job, sealed = private_job(ledger, private_settings(tmp_path, node_keys), spec, params, clock)
    verdict = deliver_private(ledger, object_store, job, miner, PNG, job_key(sealed, node_keys))
    assert (verdict.accepted, verdict.state) == (True, JobState.COMPLETED)
    assert verdict.points_micro == to_micro(job_points(spec, params)) > 0


@pytest.mark.parametrize(("max_tokens", "claim", "why"), [
    (32, (12, 33), "job allowing 32 holds at most 32"),  # beyond max_tokens
    (2000, (12, 1000), "holds at most"),  # within max_tokens, beyond what the ciphertext's bytes can hold
    (32, (2000, 6), "prompt tokens; the sealed prompt"),  # more prompt tokens than the sealed prompt has bytes
])
def test_a_private_completion_claiming_more_tokens_than_its_ciphertexts_hold_is_refused(
        ledger: Ledger, catalog: Catalog, clock: Clock, object_store: ObjectStore, miner: Wallet, tmp_path: Path,
        node_keys: list[PrivateKey], max_tokens: int, claim: tuple[int, int], why: str) -> None:
    spec = catalog[TEXT_MODEL]
    params = TextParams(prompt=SECRET_PROMPT, max_tokens=max_tokens)
    job, sealed = private_job(ledger, private_settings(tmp_path, node_keys), spec, params, clock)
    verdict = deliver_private(ledger, object_store, job, miner, answer(12, 6, SECRET_ANSWER),
                              job_key(sealed, node_keys), input_tokens=claim[0], output_tokens=claim[1])
    assert (verdict.accepted, verdict.reason, verdict.points_micro) == (False, Reason.TOKEN_MISMATCH, 0)
    [(reason, by)] = ledger.reader.rejections(job.id)
    assert (reason, by) == (Reason.TOKEN_MISMATCH, miner.address)
    view = ledger.reader.job(job.id)
    assert view is not None and view.state is JobState.QUEUED  # another miner gets it
    with ledger.engine.connect() as conn:
        detail = conn.execute(select(Rejection.detail).where(Rejection.job_id == job.id)).scalar_one()
    assert why in detail


def test_a_content_type_of_the_other_kind_is_refused(
        ledger: Ledger, catalog: Catalog, clock: Clock, object_store: ObjectStore, miner: Wallet, tmp_path: Path,
        node_keys: list[PrivateKey]) -> None:
    spec = catalog[TEXT_MODEL]
    job, sealed = private_job(ledger, private_settings(tmp_path, node_keys), spec,
                              TextParams(prompt=SECRET_PROMPT, max_tokens=32), clock)
    clear = deliver_private(ledger, object_store, job, miner, answer(12, 6, SECRET_ANSWER),
                            job_key(sealed, node_keys), input_tokens=12, output_tokens=6,
                            content_type="application/json")
    assert (clear.accepted, clear.reason) == (False, Reason.WRONG_CONTENT_TYPE)
    public = text_job(ledger, catalog, clock)
    data = answer(12, 6)
    object_store.put(public.output_key, data, PRIVATE_CONTENT_TYPE)
    claim = completion(public, miner, data, input_tokens=12, output_tokens=6)
    passed_off = ledger.record_completion(sign(claim.model_copy(update={"content_type": PRIVATE_CONTENT_TYPE}),
                                               miner))
    assert (passed_off.accepted, passed_off.reason) == (False, Reason.WRONG_CONTENT_TYPE)
    for job_id in (job.id, public.id):
        view = ledger.reader.job(job_id)
        assert view is not None and view.state is JobState.QUEUED and ledger.reader.points_entries(job_id) == 0
