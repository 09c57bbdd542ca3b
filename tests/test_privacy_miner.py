"""The privacy miner (issue 16): gathering key shares from real HTTP key-release nodes, running a private job end
to end on a real pipeline with its output in SeaweedFS, the failures a private job can meet, admission, and the
registration reaching the ledger's inbox from a restricted RabbitMQ user.

The key-release nodes here are small ``http.server`` apps speaking the fixed API (``POST /v1/share``): each
opens its own sealed share of the job's envelope and seals it to the requester's registered X25519 key, as the
real nodes (``heurist.privacy.keyrelease``, built apart) do, without their ledger checks. A node can be down (its
port closed), refusing (403), slow, or lying (a grant sealed to another key, another node's share, or a
well-formed share of random points).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"

from kombu import Connection, Queue
from nacl import bindings
from nacl.public import PrivateKey, PublicKey
from pydantic import ValidationError

from heurist import broker
from heurist.access.backend import inbox_name
from heurist.access.backends.rabbitmq import RabbitMQAccess
from heurist.access.miner_app import confine_miner
from heurist.access.topology import setup_broker
from heurist.catalog import load_catalog
from heurist.celery_app import create_app
from heurist.dispatch import DispatchSigner
from heurist.errors import ConfigError, FailureKind, JobRefused, public_failure
from heurist.identity import Wallet
from heurist.jobs import ImageParams, JobMessage, JobParams, PrivateEnvelope, TextOutput, TextParams, Timings
from heurist.ledger.claims import AcceptedClaim
from heurist.ledger.tables import AuditReason
from heurist.privacy.envelope import (
    DecryptionError,
    PrivacyError,
    Share,
    decrypt_output,
    encrypt_output,
    job_aad,
    open_sealed,
    seal,
    seal_to,
)
from heurist.privacy.messages import ShareGrant, SignedKeyRequest, SignedRegistration
from heurist.privacy.metering import PRIVATE_CONTENT_TYPE, PRIVATE_PROMPT, metering
from heurist.privacy.shares import ShareGatherer, miner_x25519, registration
from heurist.settings import Settings
from heurist.settings_privacy import KeyReleaseNode
from heurist.signing import DEFAULT_DOMAIN, message_signer, sign_failure
from heurist.storage.backends.s3 import S3ObjectStore
from heurist.storage.seaweed import free_ports
from tasks.names import REGISTER_MINER, REGISTER_PRIVACY
from tests.fixtures.ledger import DEVICE
from workers.audit.auditor import check_text_output
from workers.audit.image_check import undecodable
from workers.audit.private import NotAuditable, PrivateAudits
from workers.miner.admission import Admission, Origin
from workers.miner.device import detect_device
from workers.miner.launch import register_privacy
from workers.miner.pipelines import load_pipeline
from workers.miner.pipelines.backend import Pipeline
from workers.miner.private import PrivateJobs
from workers.miner.runtime import MinerRuntime

TEXT, IMAGE = "smollm2-135m", "tiny-sd"
ACC = '{"kind":"privacy_enabled"}'
SECRET = "Describe the lighthouse on Kessler Point in one sentence"
CATALOG = load_catalog()


# --- key-release-like nodes --------------------------------------------------------------------------------


@dataclass
class Registry:
    """What the nodes know: the jobs' envelopes and the registered miners' X25519 keys."""

    envelopes: dict[str, PrivateEnvelope] = field(default_factory=dict)
    miners: dict[str, PublicKey] = field(default_factory=dict)

    def register(self, signed: SignedRegistration) -> None:
        reg = signed.registration
        assert message_signer(reg, signed.signature, DEFAULT_DOMAIN) == reg.miner
        self.miners[reg.miner.lower()] = PublicKey(bytes.fromhex(reg.x25519_public_key))


class Node:
    """Key-release node ``index`` on its own port; ``mode``: up, refuse, slow, misseal (to another key), swap
    (another node's share, correctly sealed) or lie (random points with this node's x, correctly sealed).
    ``delay_s``: how long every answer waits (0: none)."""

    def __init__(self, index: int, registry: Registry, port: int) -> None:
        self.index, self.registry, self.port = index, registry, port
        self.key = PrivateKey.generate()
        self.mode = "up"
        self.delay_s = 0.0
        self.server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def entry(self) -> KeyReleaseNode:
        return KeyReleaseNode(url=self.url, public_key=bytes(self.key.public_key).hex())

    def start(self) -> None:
        node = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                status, body = node.answer(self.path, self.rfile.read(int(self.headers["Content-Length"])))
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def answer(self, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        if path != "/v1/share":
            return 404, {"detail": "not found"}
        try:
            signed = SignedKeyRequest.model_validate_json(body)
        except ValidationError:
            return 422, {"detail": "malformed request"}
        request = signed.request
        time.sleep(self.delay_s)
        if self.mode == "refuse":
            return 403, {"detail": f"ACC not satisfied for {request.miner}: privacy_enabled does not hold"}
        if self.mode == "slow":
            time.sleep(3)
        if message_signer(request, signed.signature, DEFAULT_DOMAIN) != request.miner:
            return 403, {"detail": "forged request"}
        if request.node != self.index or request.expires_at < time.time():
            return 400, {"detail": "not for this node, or expired"}
        envelope = self.registry.envelopes.get(request.job_id)
        miner = self.registry.miners.get(request.miner.lower())
        if envelope is None or miner is None:
            return 403, {"detail": "unknown job or unregistered requester"}
        mine = next(s for s in envelope.shares if s.node == self.index)
        opened = open_sealed(self.key, mine.sealed)
        assert opened["job_id"] == request.job_id and opened["node"] == self.index
        share = Share.from_json(opened)
        if self.mode == "swap":  # another node's point, sealed as this node's: a miner must not count it
            share = Share(x=self.index % len(envelope.shares) + 1, a=share.a, b=share.b)
        if self.mode == "lie":  # well formed, this node's x, sealed to the miner: only the key's check catches it
            share = Share(x=self.index, a=os.urandom(16), b=os.urandom(16))
        to = PrivateKey.generate().public_key if self.mode == "misseal" else miner
        sealed = seal_to(to, share.to_json(job_id=request.job_id, node=self.index))
        return 200, ShareGrant(job_id=request.job_id, node=self.index, sealed=sealed).model_dump(mode="json")


@pytest.fixture
def registry() -> Registry:
    return Registry()


@pytest.fixture
def nodes(registry: Registry) -> Iterator[list[Node]]:
    started = [Node(i, registry, port) for i, port in enumerate(free_ports(3), start=1)]
    for node in started:
        node.start()
    yield started
    for node in started:
        node.stop()


@pytest.fixture
def wallet(registry: Registry) -> Wallet:
    miner = Wallet.create()
    registry.register(registration(miner, "heurist-privacy-v1"))
    return miner


def gatherer(wallet: Wallet, nodes: list[Node], timeout_s: float = 5.0) -> ShareGatherer:
    return ShareGatherer(wallet, [n.entry for n in nodes], 2, DEFAULT_DOMAIN, timeout_s)


def sealed_job(registry: Registry, nodes: list[Node], real: JobParams, model_id: str, *,
               clear: JobParams | None = None, output_url: str = "http://127.0.0.1:1/b/x",
               job_id: str | None = None) -> tuple[JobMessage, bytes]:
    """A private job as the client seals it (key, envelope), known to the nodes."""
    job_id = job_id or str(uuid.uuid4())
    key = os.urandom(32)
    envelope = seal(key, real, job_id=job_id, model_id=model_id, acc_text=ACC, threshold=2,
                    nodes=[n.key.public_key for n in nodes])
    registry.envelopes[job_id] = envelope
    job = JobMessage(job_id=job_id, model_id=model_id, params=clear or metering(real), output_url=output_url,
                     deadline_at=time.time() + 600, private=envelope)
    return job, key


def secrets_in(text: str, key: bytes) -> list[str]:
    """The key material ``text`` shows: the key, either half, in hex or base64."""
    forms = [key.hex(), key[:16].hex(), key[16:].hex(), base64.b64encode(key).decode()]
    return [f for f in forms if f.lower() in text.lower()]


# --- gathering shares --------------------------------------------------------------------------------------


def test_three_nodes_up_give_the_key_and_the_slow_one_is_not_waited_for(registry: Registry, nodes: list[Node],
                                                                       wallet: Wallet) -> None:
    job, key = sealed_job(registry, nodes, TextParams(prompt=SECRET, max_tokens=8), TEXT)
    assert job.private is not None
    assert gatherer(wallet, nodes).key_for(job.job_id, job.private, job.model_id) == key
    nodes[2].mode = "slow"  # answers after 3 s: two shares are enough, so the key comes at once
    started = time.monotonic()
    assert gatherer(wallet, nodes).key_for(job.job_id, job.private, job.model_id) == key
    assert time.monotonic() - started < 1.5


def test_one_node_down_still_gives_the_key_at_two_of_three(registry: Registry, nodes: list[Node],
                                                          wallet: Wallet) -> None:
    job, key = sealed_job(registry, nodes, TextParams(prompt=SECRET, max_tokens=8), TEXT)
    assert job.private is not None
    nodes[1].stop()
    assert gatherer(wallet, nodes).key_for(job.job_id, job.private, job.model_id) == key


def test_two_nodes_down_fail_with_each_nodes_outcome_and_no_key(
        registry: Registry, nodes: list[Node], wallet: Wallet, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    job, key = sealed_job(registry, nodes, TextParams(prompt=SECRET, max_tokens=8), TEXT)
    assert job.private is not None
    nodes[0].stop()
    nodes[2].stop()
    with pytest.raises(PrivacyError) as caught:
        gatherer(wallet, nodes).key_for(job.job_id, job.private, job.model_id)
    message = str(caught.value)
    assert message == ("got 1 of 2 key shares needed (node 1: connection refused; node 2: released; "
                       "node 3: connection refused)")
    assert secrets_in(message, key) == [] and secrets_in(caplog.text, key) == []


def test_a_refusing_node_is_counted_as_refused_with_its_reason(registry: Registry, nodes: list[Node],
                                                              wallet: Wallet) -> None:
    job, key = sealed_job(registry, nodes, TextParams(prompt=SECRET, max_tokens=8), TEXT)
    assert job.private is not None
    nodes[2].mode = "refuse"
    assert gatherer(wallet, nodes).key_for(job.job_id, job.private, job.model_id) == key  # 2 of 3 released
    nodes[1].stop()
    with pytest.raises(PrivacyError) as caught:
        gatherer(wallet, nodes).key_for(job.job_id, job.private, job.model_id)
    assert str(caught.value) == (
        f"got 1 of 2 key shares needed (node 1: released; node 2: connection refused; node 3: refused: ACC not "
        f"satisfied for {wallet.address}: privacy_enabled does not hold)")


@pytest.mark.parametrize(("mode", "why"), [("misseal", "node 3: its grant does not open: a sealed key share "
                                                       "does not open with this key"),
                                          ("swap", "node 3: sealed a share of another job or node")])
def test_a_lying_node_is_not_counted(registry: Registry, nodes: list[Node], wallet: Wallet, mode: str,
                                     why: str) -> None:
    job, _ = sealed_job(registry, nodes, TextParams(prompt=SECRET, max_tokens=8), TEXT)
    assert job.private is not None
    nodes[2].mode = mode
    nodes[0].stop()
    with pytest.raises(PrivacyError, match="got 1 of 2") as caught:
        gatherer(wallet, nodes).key_for(job.job_id, job.private, job.model_id)
    assert why in str(caught.value)


def test_a_lying_node_answering_first_does_not_keep_the_key_from_the_honest_two(
        registry: Registry, nodes: list[Node], wallet: Wallet, caplog: pytest.LogCaptureFixture) -> None:
    """A share of random points with the liar's own x passes every check of the grant; combined first (it
    answers first), it gives a wrong key. That key must not be returned: the honest pair's is."""
    caplog.set_level(logging.DEBUG)
    job, key = sealed_job(registry, nodes, TextParams(prompt=SECRET, max_tokens=8), TEXT)
    assert job.private is not None
    nodes[0].mode = "lie"
    nodes[1].delay_s = nodes[2].delay_s = 0.3  # the liar is first in, and in the first pair of shares
    assert gatherer(wallet, nodes).key_for(job.job_id, job.private, job.model_id) == key
    assert f"job {job.job_id}: key rebuilt from 3 of 3 nodes" in caplog.text
    assert secrets_in(caplog.text, key) == []


def test_two_lying_nodes_fail_the_job_naming_the_nodes_that_answered(
        registry: Registry, nodes: list[Node], wallet: Wallet, smollm: Pipeline,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    job, key = sealed_job(registry, nodes, TextParams(prompt=SECRET, max_tokens=8), TEXT)
    assert job.private is not None
    nodes[0].mode = nodes[2].mode = "lie"
    with pytest.raises(PrivacyError) as caught:
        gatherer(wallet, nodes).key_for(job.job_id, job.private, job.model_id)
    assert str(caught.value) == ("the shares received do not rebuild the job's key (a key-release node sent a bad "
                                 "share: nodes 1, 2, 3 answered)")
    text = _failure_text(runtime(wallet, nodes, {TEXT: smollm}), job, PrivacyError)
    assert text == f"privacy: {caught.value}" and FailureKind.of(text) is FailureKind.PRIVACY
    nodes[1].stop()  # the two liars alone: t shares that do not open, and the node that did not answer
    with pytest.raises(PrivacyError) as caught:
        gatherer(wallet, nodes).key_for(job.job_id, job.private, job.model_id)
    assert str(caught.value) == ("the shares received do not rebuild the job's key (a key-release node sent a bad "
                                 "share: nodes 1, 3 answered; node 2: connection refused)")
    assert secrets_in(str(caught.value), key) == [] and secrets_in(caplog.text, key) == []


def test_another_miners_key_opens_nothing(registry: Registry, nodes: list[Node], wallet: Wallet) -> None:
    """Grants are sealed to the registered requester: a miner that is not registered gets refusals."""
    job, _ = sealed_job(registry, nodes, TextParams(prompt=SECRET, max_tokens=8), TEXT)
    assert job.private is not None
    with pytest.raises(PrivacyError, match=r"got 0 of 2 .*node 1: refused: unknown job or unregistered requester"):
        gatherer(Wallet.create(), nodes).key_for(job.job_id, job.private, job.model_id)


def test_the_registration_is_signed_and_publishes_the_wallets_x25519_key(wallet: Wallet) -> None:
    signed = registration(wallet, "heurist-privacy-v1", tee_attestation=None)
    reg = signed.registration
    assert message_signer(reg, signed.signature, DEFAULT_DOMAIN) == wallet.address
    assert reg.x25519_public_key == bytes(miner_x25519(wallet).public_key).hex()
    assert reg.policy_version == "heurist-privacy-v1" and reg.tee_attestation is None
    other = registration(Wallet.create(), "heurist-privacy-v1").registration.x25519_public_key
    assert other != reg.x25519_public_key


def test_a_privacy_miner_without_key_release_nodes_does_not_start(tmp_path: Path, nodes: list[Node]) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path)  # type: ignore[call-arg]
    with pytest.raises(ConfigError, match="HEURIST_KEYRELEASE_NODES is not set"):
        PrivateJobs.from_settings(settings, Wallet.create())
    few = Settings(_env_file=None, data_dir=tmp_path, keyrelease_nodes=[nodes[0].entry],  # type: ignore[call-arg]
                   keyrelease_threshold=2)
    with pytest.raises(ConfigError, match="THRESHOLD is 2 but only 1"):
        PrivateJobs.from_settings(few, Wallet.create())
    fine = Settings(_env_file=None, data_dir=tmp_path, keyrelease_nodes=[n.entry for n in nodes])  # type: ignore[call-arg]
    assert [n.url for n in PrivateJobs.from_settings(fine, Wallet.create()).gatherer.nodes] == [n.url for n in nodes]


# --- the runtime, end to end ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm(shared_models_dir: Path) -> Pipeline:
    return load_pipeline(CATALOG[TEXT], detect_device("cpu"), shared_models_dir)


@pytest.fixture(scope="module")
def tiny_sd(shared_models_dir: Path) -> Pipeline:
    return load_pipeline(CATALOG[IMAGE], detect_device("cpu"), shared_models_dir)


def runtime(wallet: Wallet, nodes: list[Node] | None, pipelines: dict[str, Pipeline]) -> MinerRuntime:
    privacy = None if nodes is None else PrivateJobs(gatherer(wallet, nodes), "heurist-privacy-v1")
    return MinerRuntime(wallet=wallet, device=detect_device("cpu").info, pipelines=pipelines, privacy=privacy)


def test_a_private_text_job_runs_on_its_real_prompt_and_stores_only_ciphertext(
        registry: Registry, nodes: list[Node], wallet: Wallet, smollm: Pipeline, object_store: S3ObjectStore,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    real = TextParams(prompt=SECRET, max_tokens=8)
    out_key = f"outputs/{TEXT}/private-{uuid.uuid4()}.json"
    job, key = sealed_job(registry, nodes, real, TEXT, output_url=object_store.presign_put(out_key, 600))
    assert job.params.prompt == PRIVATE_PROMPT
    signed = runtime(wallet, nodes, {TEXT: smollm}).execute(job)
    done, stored = signed.completion, signed.output  # inline: the bytes that leave the miner (heurist.ledger.inline)
    assert stored is not None and object_store.stat(out_key) is None
    expected = smollm.run(real, time.time() + 600)  # greedy: the same answer as the miner's run
    answer = TextOutput.model_validate_json(decrypt_output(key, job.job_id, stored))
    assert answer == TextOutput.model_validate_json(expected.data) and answer.text
    assert done.output_sha256 == hashlib.sha256(stored).hexdigest() and done.output_bytes == len(stored)
    assert done.content_type == PRIVATE_CONTENT_TYPE
    assert (done.input_tokens, done.output_tokens) == (expected.input_tokens, expected.output_tokens)
    clear = smollm.run(job.params, time.time() + 600)
    assert done.input_tokens != clear.input_tokens  # counted on the real prompt, not on "[private]"
    for secret in (SECRET, answer.text.strip(), "Kessler"):
        assert secret.encode() not in stored and secret not in caplog.text, secret
    assert secrets_in(caplog.text, key) == []


def test_a_private_image_job_stores_an_encrypted_png(registry: Registry, nodes: list[Node], wallet: Wallet,
                                                    tiny_sd: Pipeline, object_store: S3ObjectStore) -> None:
    real = ImageParams(prompt="a red boat at night", width=64, height=64, steps=2, guidance=7.5, seed=7)
    out_key = f"outputs/{IMAGE}/private-{uuid.uuid4()}.png"
    job, key = sealed_job(registry, nodes, real, IMAGE, output_url=object_store.presign_put(out_key, 600))
    signed = runtime(wallet, nodes, {IMAGE: tiny_sd}).execute(job)
    done, stored = signed.completion, signed.output  # a 64x64 PNG's ciphertext travels inline
    assert stored is not None and object_store.stat(out_key) is None
    png = decrypt_output(key, job.job_id, stored)
    assert png == tiny_sd.run(real, time.time() + 600).data and png.startswith(b"\x89PNG")
    assert not stored.startswith(b"\x89PNG") and done.output_sha256 == hashlib.sha256(stored).hexdigest()


def _failure_text(rt: MinerRuntime, job: JobMessage, error: type[Exception]) -> str:
    with pytest.raises(error) as caught:
        rt.execute(job)
    report = rt.failure(job, caught.value)
    assert report.failure.miner == rt.wallet.address
    assert report == sign_failure(rt.wallet, report.failure)  # signed like any failure: the ledger's usual path
    return report.failure.error


def _tampered(envelope: PrivateEnvelope, **change: str) -> PrivateEnvelope:
    return envelope.model_copy(update=change)


def test_a_tampered_ciphertext_or_a_changed_acc_fails_as_a_privacy_failure(
        registry: Registry, nodes: list[Node], wallet: Wallet, smollm: Pipeline) -> None:
    job, key = sealed_job(registry, nodes, TextParams(prompt=SECRET, max_tokens=8), TEXT)
    assert job.private is not None
    raw = bytearray(base64.b64decode(job.private.ciphertext))
    raw[5] ^= 1
    rt = runtime(wallet, nodes, {TEXT: smollm})
    for changed in (_tampered(job.private, ciphertext=base64.b64encode(bytes(raw)).decode()),
                    _tampered(job.private, acc='{"kind":"min_reputation","value":0.0}')):
        registry.envelopes[job.job_id] = changed
        text = _failure_text(rt, job.model_copy(update={"private": changed}), DecryptionError)
        assert text == (f"privacy: job {job.job_id}: the parameters do not decrypt with the job's key (a tampered "
                        "ciphertext, or an ACC or job id other than the client sealed them with)")
        assert FailureKind.of(text) is FailureKind.PRIVACY and secrets_in(text, key) == []
    assert public_failure("j", "failed", f"x; last report: {text}").endswith(
        "miners reported: the private job's key was not released to them, or its ciphertext or parameters were "
        "refused")


def test_parameters_billed_otherwise_or_beyond_the_limits_are_refused(
        registry: Registry, nodes: list[Node], wallet: Wallet, smollm: Pipeline) -> None:
    rt = runtime(wallet, nodes, {TEXT: smollm})
    more = TextParams(prompt=SECRET, max_tokens=64)
    job, _ = sealed_job(registry, nodes, more, TEXT, clear=metering(TextParams(prompt="x", max_tokens=8)))
    assert _failure_text(rt, job, PrivacyError) == (
        "privacy: the decrypted parameters are billed differently from the job's clear ones (max_tokens 64 inside, "
        "max_tokens 8 outside): refused")
    long = TextParams(prompt="y" * 4001, max_tokens=8)  # the prompt is not billed: the catalog's limit holds
    job, _ = sealed_job(registry, nodes, long, TEXT)
    assert _failure_text(rt, job, PrivacyError) == (
        f"privacy: job {job.job_id}: the decrypted parameters break the model's limits (prompt is 4001 "
        f"characters; model '{TEXT}' takes at most 4000)")


def test_too_few_shares_fail_the_job_with_the_nodes_outcomes(registry: Registry, nodes: list[Node], wallet: Wallet,
                                                            smollm: Pipeline) -> None:
    job, key = sealed_job(registry, nodes, TextParams(prompt=SECRET, max_tokens=8), TEXT)
    nodes[0].stop()
    nodes[1].mode = "refuse"
    text = _failure_text(runtime(wallet, nodes, {TEXT: smollm}), job, PrivacyError)
    assert text.startswith("privacy: got 1 of 2 key shares needed (node 1: connection refused; node 2: refused: ")
    assert text.endswith("node 3: released)") and secrets_in(text, key) == []


def test_a_public_miner_refuses_private_jobs_and_a_privacy_miner_serves_both(
        registry: Registry, nodes: list[Node], wallet: Wallet, smollm: Pipeline) -> None:
    store = "http://127.0.0.1:8333"
    dispatcher = DispatchSigner(Wallet.create())
    job, _ = sealed_job(registry, nodes, TextParams(prompt=SECRET, max_tokens=8), TEXT,
                        output_url=f"{store}/heurist-outputs/outputs/{TEXT}/j.json?X-Amz-Signature=abc")
    public_job = job.model_copy(update={"private": None, "params": TextParams(prompt="hi", max_tokens=8)})
    models = {TEXT: CATALOG[TEXT]}
    public = Admission(dispatcher.address, Origin.of(store), models)
    private = Admission(dispatcher.address, Origin.of(store), models, private=True)
    with pytest.raises(JobRefused) as refused:
        public.admit(dispatcher.sign(job).model_dump(mode="json"))
    assert refused.value.reason == "not_private"
    assert str(refused.value) == (f"not_private: job {job.job_id} is private and this miner is not a privacy miner "
                                  "(`heurist miner --private`)")
    assert public.admit(dispatcher.sign(public_job).model_dump(mode="json")) == public_job
    assert private.admit(dispatcher.sign(job).model_dump(mode="json")) == job
    assert private.admit(dispatcher.sign(public_job).model_dump(mode="json")) == public_job
    # Past admission (an in-process runtime), a public runtime still runs nothing of a private job.
    assert _failure_text(runtime(wallet, None, {TEXT: smollm}), job, PrivacyError) == (
        f"privacy: job {job.job_id} is private and this miner is not a privacy miner (start it with "
        "`heurist miner --private`)")


# --- the auditor's texts: no plaintext in a verdict or a log -------------------------------------------------


def test_a_private_output_that_is_no_text_output_fails_its_audit_without_quoting_it(
        registry: Registry, nodes: list[Node], wallet: Wallet, smollm: Pipeline) -> None:
    """pydantic's ``str(err)`` quotes ``input_value=``: the decrypted answer, which went into the audit's
    detail (a ledger row) and the log."""
    job, key = sealed_job(registry, nodes, TextParams(prompt=SECRET, max_tokens=8), TEXT)
    answer = json.dumps({"text": f"{SECRET}: its lamp is red", "input_tokens": 3}).encode()
    plain = decrypt_output(key, job.job_id, encrypt_output(key, job.job_id, answer))
    finding = check_text_output(smollm, TextParams(prompt=SECRET, max_tokens=8), plain)
    assert (finding.passed, finding.reason) == (False, AuditReason.OUTPUT_UNDECODABLE)
    assert finding.detail == "output is not a TextOutput (output_tokens: Field required)"
    assert "Kessler" not in finding.detail and "lamp" not in finding.detail


def test_an_undecodable_private_image_is_named_without_its_bytes() -> None:
    """Pillow's text can quote the file: a PPM header's width is parsed with int(), whose error shows the bytes."""
    assert undecodable(b"P6\nKessler Point 8 8\n255\n") == ("the stored output is not a decodable image "
                                                             "(ValueError)")


def test_private_parameters_that_do_not_parse_are_not_quoted_by_the_auditor(
        registry: Registry, nodes: list[Node], wallet: Wallet, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    job, key = sealed_job(registry, nodes, TextParams(prompt=SECRET, max_tokens=8), TEXT)
    assert job.private is not None
    bad = json.dumps({"prompt": SECRET, "max_tokens": 8}).encode()  # no "kind": no params type to read it as
    nonce = bytes.fromhex(job.private.nonce)
    cipher = bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(bad, job_aad(job.job_id, ACC, TEXT), nonce, key)
    sealed = job.private.model_copy(update={"ciphertext": base64.b64encode(cipher).decode()})
    registry.envelopes[job.job_id] = sealed
    claim = AcceptedClaim(job_id=job.job_id, miner=wallet.address, model_id=TEXT, params=job.params,
                          timings=Timings(run_s=1.0, upload_s=0.01, total_s=1.01), device=DEVICE, input_tokens=3,
                          output_tokens=8, weights_sha256=None, wall_s=2.0, registered_device=DEVICE)
    audits = PrivateAudits(gatherer(Wallet.create(), nodes))
    registry.register(registration(audits.gatherer.wallet, "heurist-privacy-v1"))
    with pytest.raises(NotAuditable) as caught:
        audits.open(claim, sealed)
    assert str(caught.value) == (f"job {job.job_id}: its parameters do not open: value: Unable to extract tag "
                                 "using discriminator 'kind'")
    assert "Kessler" not in caplog.text


# --- registration through a restricted miner user ------------------------------------------------------------


def test_the_registration_reaches_the_ledger_inbox_from_a_restricted_miner_user(rabbit_url: str,
                                                                               nodes: list[Node]) -> None:
    """`heurist miner --private`'s start: the private queues exist after `heurist broker setup`, and the signed
    registration goes through the miner's own inbox, with its user id, as task REGISTER_PRIVACY."""
    trusted = Settings(_env_file=None, broker_url=rabbit_url)  # type: ignore[call-arg]
    setup_broker(trusted, CATALOG)
    access = RabbitMQAccess.from_settings(trusted)
    miner = Wallet.create()
    creds = access.add_miner(miner.address)
    try:
        settings = Settings(_env_file=None, broker_url=creds.broker_url,  # type: ignore[call-arg]
                            keyrelease_nodes=[n.entry for n in nodes])
        app = create_app(settings)
        spec = CATALOG[TEXT]
        confine_miner(app, creds.broker_url, settings.ledger_queue, [spec.queue, spec.private_queue], wait_s=10)
        register_privacy(app, PrivateJobs.from_settings(settings, miner), settings.ledger_queue)
        with Connection(rabbit_url) as admin:
            message = admin.SimpleQueue(Queue(inbox_name(creds.user), no_declare=True)).get(timeout=10)
            assert message.headers["task"] == REGISTER_PRIVACY
            assert message.properties["user_id"] == creds.user
            args = message.payload[0] if isinstance(message.payload, list | tuple) else message.payload["args"]
            signed = SignedRegistration.model_validate(args[0])
            message.ack()
        assert message_signer(signed.registration, signed.signature, DEFAULT_DOMAIN) == miner.address
        assert signed.registration.x25519_public_key == bytes(miner_x25519(miner).public_key).hex()
        app.close()
    finally:
        access.forget(miner.address)


# --- `heurist miner --private` ------------------------------------------------------------------------------


def _heurist(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("HEURIST_")}
    return subprocess.Popen([sys.executable, "-m", "heurist.cli.main", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**base, "COLUMNS": "200", **env})


def _next(queue: Any, within_s: float) -> Any:
    """The next message on ``queue`` (the embedded broker cuts each wait to 0.25 s, so poll), acked."""
    ends = time.monotonic() + within_s
    while True:
        try:
            message = queue.get(timeout=1)
        except queue.Empty:
            if time.monotonic() > ends:
                raise
            continue
        message.ack()
        return message


def test_miner_private_without_nodes_stops_before_loading_models(tmp_path: Path) -> None:
    key = tmp_path / "k"
    Wallet.create().save(key)
    done = _heurist(["miner", "--private", "--key-file", str(key), "--models", IMAGE, "--device", "cpu"],
                    {"HEURIST_BROKER_URL": f"embedded+sqlite:///{tmp_path}/b.sqlite",
                     "HEURIST_MODELS_DIR": str(tmp_path / "none")})  # no model files: it must stop before
    _, err = done.communicate(timeout=120)
    assert done.returncode == 2, err
    assert "HEURIST_KEYRELEASE_NODES is not set" in err and "Traceback" not in err


def test_miner_private_consumes_the_private_queue_and_registers_after_its_hello(
        tmp_path: Path, shared_models_dir: Path, nodes: list[Node]) -> None:
    broker.register()
    url = f"embedded+sqlite:///{tmp_path}/b.sqlite"
    miner = Wallet.create()
    miner.save(tmp_path / "k")
    env = {"HEURIST_BROKER_URL": url, "HEURIST_MODELS_DIR": str(shared_models_dir), "HEURIST_DATA_DIR": str(tmp_path),
           "HEURIST_S3_ENDPOINT": "http://127.0.0.1:1", "HEURIST_DISPATCH_ADDRESS": Wallet.create().address,
           "HEURIST_KEYRELEASE_NODES": json.dumps([n.entry.model_dump() for n in nodes])}
    process = _heurist(["miner", "--private", "--key-file", str(tmp_path / "k"), "--models", IMAGE, "--device",
                        "cpu", "--loglevel", "WARNING"], env)
    try:
        with Connection(url) as conn:
            ledger = conn.SimpleQueue("ledger")
            first, second = _next(ledger, 180), _next(ledger, 30)
    finally:
        process.terminate()
        _, err = process.communicate(timeout=60)
    assert [first.headers["task"], second.headers["task"]] == [REGISTER_MINER, REGISTER_PRIVACY], err
    signed = SignedRegistration.model_validate(second.payload[0][0])
    assert message_signer(signed.registration, signed.signature, DEFAULT_DOMAIN) == miner.address
    spec = CATALOG[IMAGE]
    assert f"privacy miner {miner.address} consuming {spec.queue}, {spec.private_queue}" in err
