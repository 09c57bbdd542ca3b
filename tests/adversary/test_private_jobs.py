"""Private jobs on a live network (issue 16): RabbitMQ, PostgreSQL, SeaweedFS, 3 key-release processes needing 2,
a privacy miner and a public miner on their own broker users, and an auditor with its own key.

* A private text job and a private image job complete; the client reads both, the auditor the ACC admits
  replays both, and points equal a public job's.
* Nothing readable leaks: RabbitMQ's firehose tracer (every message published or delivered on the vhost), every
  object in the bucket, a ``pg_dump`` of the whole database and every log line of every process hold neither the
  prompt's code word, the answer, the image's bytes nor the job's key.
* Refusals, made over raw HTTP with the attackers' own keys: a public miner, a privacy miner outside the ACC and
  one under its minimum reputation, a replayed request and a forged one each get no share, and each is logged.
* Tampering: a ciphertext flipped after sealing, and an ACC widened after sealing, each end the job FAILED with
  the reason; the threshold: with one node down a job completes, with two down it fails saying why.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
import requests
from kombu import Connection
from sqlalchemy import make_url, select

from heurist.access.backend import inbox_name
from heurist.catalog.schema import Deadline, ModelSpec
from heurist.client import Client
from heurist.db.engine import session_scope
from heurist.dispatch import job_message, queue_for, send_job
from heurist.embedded import EmbeddedNetwork, wait_until
from heurist.embedded_privacy import node_name, start_keyrelease
from heurist.identity import Wallet
from heurist.jobs import DeviceInfo, JobState, MinerHello, PrivateEnvelope, SignedHello, TextOutput
from heurist.ledger.tables import Audit, AuditOutcome, Job
from heurist.privacy import acc, envelope
from heurist.privacy import client as privacy
from heurist.privacy.keyrelease.keys import load_key
from heurist.privacy.keyrelease.registry import approve
from heurist.privacy.messages import KeyRequest, PrivacyRegistration, SignedKeyRequest, SignedRegistration
from heurist.privacy.shares import miner_x25519, registration
from heurist.privacy.tables import Approval, Registration, Release, TeeStatus
from heurist.settings_privacy import KeyReleaseNode
from heurist.signing import Domain, sign_message
from heurist.submission import text_params
from tasks.names import REGISTER_MINER, REGISTER_PRIVACY
from tests.adversary.conftest import send_to_inbox
from tests.adversary.raw import Attacker
from tests.fixtures.broker import _rabbitmqctl, ready

SECRET = "zebra-violet-4471"  # the code word in every private prompt: it must appear nowhere but at the ends
PROMPT = f"Repeat the code word {SECRET}, then name three primary colors."
SPY = "spy.firehose"


@pytest.fixture(scope="module")
def network_settings() -> dict[str, Any]:
    """Every job audited; no re-sends and a fast sweep, so a job a miner reported failed ends FAILED soon."""
    return {"audit_base_rate": 1.0, "audit_new_miner_rate": 1.0, "audit_suspicious_rate": 1.0, "job_resends": 0,
            "sweep_grace_s": 3.0, "sweep_interval_s": 1.0}


@pytest.fixture(scope="module")
def firehose(rabbit_url: str) -> Iterator[list[bytes]]:
    """RabbitMQ's firehose on the module's vhost, into one spy queue, from before the network starts; the list
    is filled by ``drain`` with each traced message's headers and body."""
    vhost = rabbit_url.rsplit("/", 1)[1]
    with Connection(rabbit_url) as conn:
        channel = conn.channel()
        channel.queue_declare(SPY, durable=False, auto_delete=False, arguments={"x-max-length": 200_000})
        channel.queue_bind(SPY, "amq.rabbitmq.trace", "#")
    _rabbitmqctl("trace_on", "-p", vhost)
    captured: list[bytes] = []
    yield captured
    _rabbitmqctl("trace_off", "-p", vhost)


def drain(rabbit_url: str, captured: list[bytes]) -> list[bytes]:
    with Connection(rabbit_url) as conn:
        channel = conn.channel()
        while (message := channel.basic_get(SPY, no_ack=True)) is not None:
            captured.append(json.dumps(message.headers, default=str).encode() + b"\n" + bytes(message.body))
    return captured


@dataclass
class PrivateNet:
    net: EmbeddedNetwork
    client: Client
    nodes: list[KeyReleaseNode]
    miner: Wallet
    public: Wallet
    auditor: Wallet
    approver: Wallet
    plaintext: dict[str, bytes]


@pytest.fixture(scope="module")
def pn(firehose: list[bytes], network: EmbeddedNetwork) -> Iterator[PrivateNet]:
    approver = Wallet.create()  # the nodes count only approvals this key signed
    network.base = network.base.model_copy(update={"privacy_approver": approver.address})
    nodes = start_keyrelease(network, count=3, threshold=2)
    miner = network.start_miner(["tiny-sd", "smollm2-135m"], name="privacy-miner", private=True)
    public = network.start_miner(["tiny-sd"], name="public-miner")
    auditor, key_file = network.new_key_file("auditor")
    network.start_auditor(["tiny-sd", "smollm2-135m"], key_file=key_file)
    with Client(network.settings()) as client:
        engine = client.ledger.engine
        for wallet in (miner, public):
            wait_until(lambda w=wallet: client.ledger.is_registered(w.address), 300, "the miners to register",
                       check=network.check_alive)
        for wallet in (miner, auditor):
            wait_until(lambda w=wallet: _registered(engine, w.address), 120, "privacy registrations",
                       check=network.check_alive)
            approve(engine, wallet.address, True, "test operator", "approved by the test", time.time(),
                    signer=approver, domain=Domain.of(client.settings))
        yield PrivateNet(network, client, nodes, miner, public, auditor, approver, {})


def _registered(engine: Any, address: str) -> bool:
    with session_scope(engine) as session:
        return session.scalar(select(Registration.id).where(Registration.address == address).limit(1)) is not None


def _short(spec: ModelSpec, seconds: float) -> ModelSpec:
    return spec.model_copy(update={"deadline": Deadline(base_s=seconds, per_unit_s=0.0)})


def _request(wallet: Wallet, job_id: str, node: int, *, signer: Wallet | None = None) -> dict[str, Any]:
    request = KeyRequest(miner=wallet.address, job_id=job_id, node=node, nonce=os.urandom(32).hex(),
                         expires_at=time.time() + 30)
    signed = SignedKeyRequest(request=request, signature=sign_message(signer or wallet, request, Domain()))
    return signed.model_dump(mode="json")


def _ask(pn: PrivateNet, node: int, body: dict[str, Any]) -> requests.Response:
    return requests.post(f"{pn.nodes[node - 1].url}/v1/share", json=body, timeout=10)


def _node_log(pn: PrivateNet, node: int) -> str:
    return (pn.net.logs / f"{node_name(node)}.log").read_text(errors="replace")


# ------------------------------------------------------------------------------------------ the honest path


def test_private_jobs_complete_the_client_reads_them_and_the_admitted_auditor_replays_them(pn: PrivateNet) -> None:
    text = pn.client.submit_text(PROMPT, model="smollm2-135m", max_tokens=24, private=True)
    image = pn.client.submit_image(f"{SECRET}: a lighthouse at dawn", model="tiny-sd", seed=3, private=True)
    public = pn.client.submit_image("a lighthouse at dawn", model="tiny-sd", seed=3)
    results = [h.result(timeout=300) for h in (text, image, public)]
    assert [r.state for r in results] == [JobState.COMPLETED] * 3, [r.error for r in results]
    assert results[0].miner == results[1].miner == pn.miner.address  # only the privacy miner may take them
    assert results[1].points == results[2].points  # same price as a public job of the same size
    answer = TextOutput.model_validate_json(pn.client.fetch_output(results[0]))
    png = pn.client.fetch_output(results[1])
    assert answer.output_tokens > 0 and png.startswith(b"\x89PNG")
    with session_scope(pn.client.ledger.engine) as session:
        stored = {row.id: row.params for row in session.scalars(select(Job).where(Job.id.in_([text.id, image.id])))}
    assert all(SECRET not in json.dumps(params) for params in stored.values())
    pn.plaintext.update(answer=answer.text.encode(), png=png[64:128], text_id=text.id.encode(),
                        image_id=image.id.encode())

    def audited() -> list[AuditOutcome]:
        with session_scope(pn.client.ledger.engine) as session:
            return list(session.scalars(select(Audit.outcome).where(Audit.job_id.in_([text.id, image.id]))))

    wait_until(lambda: len(audited()) == 2, 300, "the auditor to replay both private jobs", check=pn.net.check_alive)
    assert audited() == [AuditOutcome.PASSED] * 2


def test_nothing_readable_leaks_to_the_broker_the_store_the_database_or_the_logs(
        pn: PrivateNet, firehose: list[bytes], rabbit_url: str, module_postgres_url: str) -> None:
    if "answer" not in pn.plaintext:
        pytest.skip("needs the honest path's jobs")
    keys = [envelope.data_key(pn.client.privacy_secret, pn.plaintext[j].decode()) for j in ("text_id", "image_id")]
    needles = {"the code word": SECRET.encode(), "the answer": pn.plaintext["answer"], "the image": pn.plaintext["png"],
               **{f"key {i}": k.hex().encode() for i, k in enumerate(keys)}}
    assert len(pn.plaintext["answer"]) >= 8
    messages = drain(rabbit_url, firehose)
    for job in ("text_id", "image_id"):  # the tracer saw the jobs' messages, sealed, and their completions
        assert sum(pn.plaintext[job] in m for m in messages) >= 3, f"the firehose missed {job}"
    assert any(b"private.vram8.smollm2-135m" in m and b"ciphertext" in m for m in messages)
    settings = pn.net.settings()
    s3 = boto3.client("s3", endpoint_url=settings.s3_endpoint, region_name="us-east-1",
                      aws_access_key_id=settings.s3_access_key.get_secret_value(),  # type: ignore[union-attr]
                      aws_secret_access_key=settings.s3_secret_key.get_secret_value())  # type: ignore[union-attr]
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=settings.s3_bucket)
    objects = [s3.get_object(Bucket=settings.s3_bucket, Key=o["Key"])["Body"].read()
               for page in pages for o in page.get("Contents", [])]
    assert len(objects) >= 3  # the two private outputs' frozen copies, sent inline (heurist.ledger.inline), and more
    libpq = make_url(module_postgres_url).set(drivername="postgresql").render_as_string(hide_password=False)
    dump = subprocess.run(["pg_dump", "--data-only", libpq], capture_output=True, check=True).stdout
    assert b"keyrelease_log" in dump and b"privacy_registrations" in dump
    logs = b"".join(p.read_bytes() for p in sorted(pn.net.logs.glob("*.log")))
    assert b"released its share" in logs or b"released" in logs
    for where, haystacks in {"a broker message": messages, "an object": objects, "the database": [dump],
                             "a log": [logs]}.items():
        for what, needle in needles.items():
            assert not any(needle in h for h in haystacks), f"{what} is readable in {where}"
    for what in ("the code word", "the answer"):  # nor in base64, as a careless encoder would put it
        b64 = base64.b64encode(needles[what])[4:-4]
        assert not any(b64 in h for h in [*messages, *objects, dump, logs]), f"{what} in base64 leaked"


# ------------------------------------------------------------------------------------------------ refusals


def _private_job(pn: PrivateNet, condition: dict[str, Any] | None = None, seconds: float = 12.0) -> str:
    spec = _short(pn.client.catalog["smollm2-135m"], seconds)
    params = text_params(spec, PROMPT, max_tokens=8, temperature=0.0, seed=0)
    return pn.client.submit_params(spec, params, private=True, acc=condition).id


def test_refused_requests_get_no_share_and_are_logged(pn: PrivateNet) -> None:
    outsider = {"kind": "and", "all": [{"kind": "privacy_enabled"},
                                       {"kind": "addresses", "addresses": [Wallet.create().address]}]}
    picky = {"kind": "and", "all": [{"kind": "privacy_enabled"}, {"kind": "min_reputation", "value": 0.99}]}
    open_job, fenced, unreachable = _private_job(pn), _private_job(pn, outsider), _private_job(pn, picky)
    cases = [
        ("a public miner", _request(pn.public, open_job, 1), "not a registered privacy miner"),
        ("outside the ACC's addresses", _request(pn.miner, fenced, 1), "ACC not satisfied: addresses"),
        ("under the ACC's reputation", _request(pn.miner, unreachable, 2), "ACC not satisfied: min_reputation"),
        ("a forged request", _request(pn.miner, open_job, 3, signer=Wallet.create()), "bad signature"),
    ]
    for what, body, reason in cases:
        answer = _ask(pn, body["request"]["node"], body)
        assert answer.status_code == 403 and reason in answer.json()["detail"], (what, answer.text)
        assert "sealed" not in answer.json(), what
    insider = _database_writer_attack(pn)  # approves itself and swaps the miner's X25519 key, in the database
    answer = _ask(pn, 2, _request(insider, open_job, 2))
    assert answer.status_code == 403 and "not privacy-enabled: not approved" in answer.json()["detail"]
    honest = _request(pn.miner, open_job, 1)
    granted = _ask(pn, 1, honest)  # the privacy miner in the ACC gets its share, sealed to its own key still
    assert granted.status_code == 200
    assert envelope.open_sealed(miner_x25519(pn.miner), granted.json()["sealed"])["job_id"] == open_job
    replay = _ask(pn, 1, honest)
    assert replay.status_code == 403 and "replayed nonce" in replay.json()["detail"]
    for node, reason in ((1, "not a registered privacy miner"), (1, "ACC not satisfied: addresses"),
                         (2, "ACC not satisfied: min_reputation"), (3, "bad signature"), (1, "replayed nonce")):
        assert any("refused job" in line and reason in line for line in _node_log(pn, node).splitlines()), reason
    with session_scope(pn.client.ledger.engine) as session:
        stored = [(r.node, r.released, r.reason) for r in session.scalars(
            select(Release).where(Release.job_id.in_([fenced, unreachable]), Release.requester == pn.miner.address))]
    assert stored and not any(released for _, released, _ in stored)
    views = pn.client.wait_all([fenced, unreachable], timeout=120)  # the miner could not read them either
    for view in views:
        assert view.state is JobState.FAILED and "privacy: got 0 of 2 key shares" in (view.error or ""), view.error
        assert "ACC not satisfied" in (view.error or "")


def _database_writer_attack(pn: PrivateNet) -> Wallet:
    """What whoever can write the ledger's database (its operator, or one key-release node, which reads it) tries:
    register a key of its own, approve it without the approver key, and put its X25519 key under the privacy
    miner's address. Nodes re-check both signatures, so none of it counts."""
    insider, settings = Wallet.create(), pn.client.settings
    signed = registration(insider, settings.privacy_policy_version, Domain.of(settings))
    claim = signed.registration
    with session_scope(pn.client.ledger.engine) as session:
        session.add(Registration(address=insider.address, x25519_public_key=claim.x25519_public_key,
                                 policy_version=claim.policy_version, signature=signed.signature, tee_attestation=None,
                                 tee_status=TeeStatus.ABSENT, registered_at=claim.registered_at,
                                 received_at=time.time()))
        session.add(Approval(address=insider.address, approved=True, operator="insider", note="", at=time.time()))
        session.add(Registration(address=pn.miner.address, x25519_public_key=claim.x25519_public_key,
                                 policy_version=claim.policy_version, signature=signed.signature, tee_attestation=None,
                                 tee_status=TeeStatus.ABSENT, registered_at=time.time(), received_at=time.time()))
    return insider


def test_registrations_sent_over_a_miners_own_inbox_store_nothing_it_could_abuse(pn: PrivateNet,
                                                                                 attacker: Attacker) -> None:
    """A registered miner floods its inbox with privacy registrations: the same one over and over, one with a
    new 16 KB attestation each time, one with a low-order X25519 key, one naming the privacy miner's address.
    One row is kept, nothing under the privacy miner's address, and with no approval it gets no share."""
    me, creds, settings = attacker.wallet, attacker.creds, pn.client.settings
    hello = MinerHello(miner=me.address, models=["tiny-sd"], queues=["vram8.tiny-sd"],
                       device=DeviceInfo(kind="cpu", name="cpu", vram_gb=8.0), started_at=time.time())
    send_to_inbox(creds, REGISTER_MINER, SignedHello(hello=hello, signature=sign_message(me, hello, Domain.of(
        settings))).model_dump(mode="json"))
    wait_until(lambda: pn.client.ledger.is_registered(me.address), 60, "the attacker's hello")
    engine, domain = pn.client.ledger.engine, Domain.of(settings)

    def rows(address: str) -> int:
        with session_scope(engine) as session:
            return len(session.scalars(select(Registration.id).where(Registration.address == address)).all())

    before = rows(pn.miner.address)
    quote = base64.b64encode(os.urandom(12_000)).decode()  # 16,000 characters: the cap
    floods = [registration(me, settings.privacy_policy_version, domain) for _ in range(10)]
    floods += [registration(me, settings.privacy_policy_version, domain, tee_attestation=quote[:-4 * i or None])
               for i in range(10)]
    zero = PrivacyRegistration(miner=me.address, x25519_public_key="00" * 32,
                               policy_version=settings.privacy_policy_version, registered_at=time.time() + 1)
    floods.append(SignedRegistration(registration=zero, signature=sign_message(me, zero, domain)))
    theirs = PrivacyRegistration(miner=pn.miner.address, x25519_public_key=floods[0].registration.x25519_public_key,
                                 policy_version=settings.privacy_policy_version, registered_at=time.time())
    floods.append(SignedRegistration(registration=theirs, signature=sign_message(me, theirs, domain)))
    for signed in floods:
        send_to_inbox(creds, REGISTER_PRIVACY, signed.model_dump(mode="json"))
    wait_until(lambda: ready(pn.client, inbox_name(creds.user)) == 0, 60, "the ledger to drain the inbox")

    def refused_last_two() -> bool:  # the last two messages' refusals, logged by the ledger
        log = (pn.net.logs / "ledger.log").read_text(errors="replace")
        return f"claiming {me.address}: x25519_public_key is not a usable" in log and \
            f"claiming {pn.miner.address}: bad signature" in log

    wait_until(refused_last_two, 60, "the ledger to refuse the low-order key and the other miner's address")
    assert rows(me.address) == 1 and rows(pn.miner.address) == before
    job = _private_job(pn)
    answer = _ask(pn, 1, _request(me, job, 1))
    assert answer.status_code == 403 and "not privacy-enabled: not approved" in answer.json()["detail"]


def _tampered(pn: PrivateNet, change: str) -> str:
    """A private job whose envelope was changed after sealing (its ciphertext, or its ACC), then signed and sent
    as the dispatcher would: what a broken client, or an operator editing a job, produces."""
    client, job_id = pn.client, str(uuid.uuid4())
    spec = _short(client.catalog["smollm2-135m"], 12.0)
    params = text_params(spec, PROMPT, max_tokens=8, temperature=0.0, seed=0)
    clear, sealed = privacy.seal_job(client.settings, client.privacy_secret, job_id, spec.id, params, acc.DEFAULT)
    if change == "ciphertext":
        raw = bytearray(base64.b64decode(sealed.ciphertext))
        raw[5] ^= 0x01
        sealed = sealed.model_copy(update={"ciphertext": base64.b64encode(bytes(raw)).decode()})
    else:
        wider = acc.canonical(acc.parse({"kind": "or", "any": [{"kind": "privacy_enabled"},
                                                                {"kind": "min_reputation", "value": 0.0}]}))
        sealed = sealed.model_copy(update={"acc": wider})
    sealed = PrivateEnvelope.model_validate(sealed.model_dump())
    output_key = f"outputs/{spec.id}/{job_id}.json"
    deadline_at = time.time() + 12.0
    message = job_message(job_id, spec.id, clear, output_key, deadline_at, client.store,
                          client.settings.presign_expiry_s, private=sealed)
    queue = queue_for(spec, sealed)
    client.job_book.create_job(job_id, spec, clear, output_key, queue, deadline_at, sealed=sealed)
    send_job(client.app, client.signer.sign(message), queue)
    return job_id


def test_a_tampered_ciphertext_or_a_changed_acc_ends_the_job_failed_with_the_reason(pn: PrivateNet) -> None:
    flipped, widened = _tampered(pn, "ciphertext"), _tampered(pn, "acc")
    done = {v.job_id: v for v in pn.client.wait_all([flipped, widened], timeout=120)}
    assert done[flipped].state is JobState.FAILED
    assert "privacy: job" in (done[flipped].error or "") and "do not decrypt" in (done[flipped].error or "")
    assert done[widened].state is JobState.FAILED
    assert "the job's ACC is not the one its client sealed" in (done[widened].error or ""), done[widened].error


# ----------------------------------------------------------------------------------------------- threshold


def test_two_of_three_nodes_suffice_and_one_does_not(pn: PrivateNet) -> None:
    pn.net.kill(node_name(3))
    one_down = pn.client.submit_text("Say hello in French.", model="smollm2-135m", max_tokens=8, private=True)
    result = one_down.result(timeout=300)
    assert result.state is JobState.COMPLETED, result.error
    assert TextOutput.model_validate_json(pn.client.fetch_output(result)).output_tokens > 0
    pn.net.kill(node_name(2))
    two_down = _private_job(pn)
    [view] = pn.client.wait_all([two_down], timeout=120)
    assert view.state is JobState.FAILED
    error = view.error or ""
    assert "privacy: got 1 of 2 key shares" in error and "node 1: released" in error, error
    with session_scope(pn.client.ledger.engine) as session:
        sealed = PrivateEnvelope.model_validate(session.scalar(select(Job.sealed).where(Job.id == two_down)))
    node_key = load_key(pn.net.root / "keyrelease" / "node-1.key")
    share = envelope.Share.from_json(envelope.open_sealed(node_key, sealed.shares[0].sealed))
    logs = b"".join(p.read_bytes() for p in sorted(pn.net.logs.glob("*.log")))
    for secret in (share.a.hex(), share.b.hex()):
        assert secret not in error and secret.encode() not in logs
