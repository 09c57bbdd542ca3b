"""Key-release nodes and the privacy registry (issue 16), on SQLite and PostgreSQL: an approved privacy miner
that satisfies a job's ACC gets shares that open the job at 2 of 3; everyone else gets a refusal that is logged
(a ``keyrelease_log`` row and a WARNING line) and holds no key material. Also the registry's own refusals, the
HTTP face (200/403/413/422) and the CLI (``heurist keyrelease init``, ``heurist privacy approve|list``)."""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from nacl.public import PrivateKey
from sqlalchemy import Engine, select, update

from heurist.catalog import Catalog
from heurist.db.engine import make_engine, session_factory, session_scope
from heurist.db.migrate import upgrade
from heurist.economy.amounts import ONE
from heurist.economy.tables import Account, AccountKind, Token
from heurist.errors import ConfigError
from heurist.identity import Wallet
from heurist.jobs import MinerHello, PrivateEnvelope, SignedHello, TextParams
from heurist.ledger.jobbook import JobBook
from heurist.ledger.registration import register_miner
from heurist.ledger.service import Ledger
from heurist.ledger.tables import Job, MinerEvent, MinerEventKind
from heurist.privacy import acc, envelope
from heurist.privacy.keyrelease import registry
from heurist.privacy.keyrelease.facts import read_facts
from heurist.privacy.keyrelease.keys import init_key, load_key
from heurist.privacy.keyrelease.node import KeyReleaseNode, MalformedRequest, Policy, Refused
from heurist.privacy.keyrelease.server import MAX_BODY_BYTES, create_app
from heurist.privacy.messages import KeyRequest, PrivacyRegistration, SignedKeyRequest, SignedRegistration
from heurist.privacy.metering import metering
from heurist.privacy.tables import Registration, Release, TeeStatus
from heurist.settings_privacy import DEFAULT_POLICY_VERSION
from heurist.signing import DEFAULT_DOMAIN, sign_message
from tests.fixtures.ledger import DEVICE, Clock
from tests.fixtures.race import raced

PROMPT = "the secret plan: meet at the old mill at nine"
POLICY = Policy(DEFAULT_POLICY_VERSION, tee_required=False, domain=DEFAULT_DOMAIN)
HEURIST = [sys.executable, "-m", "heurist.cli.main"]


# ------------------------------------------------------------------------------------------------ helpers


def hello(engine: Engine, clock: Clock, wallet: Wallet, sender: str | None = None) -> None:
    """What the ledger does with a miner's signed hello: a ``miners`` row."""
    msg = MinerHello(miner=wallet.address, models=["smollm2-135m"], queues=[], device=DEVICE,
                     started_at=clock.now)
    verdict = register_miner(engine, session_factory(engine), clock, SignedHello(
        hello=msg, signature=sign_message(wallet, msg)), sender)
    assert verdict.accepted, verdict


def x25519(wallet: Wallet) -> PrivateKey:
    return envelope.x25519_key(bytes.fromhex(wallet.key_hex.removeprefix("0x")))


def registration(wallet: Wallet, now: float, *, signer: Wallet | None = None, policy: str = DEFAULT_POLICY_VERSION,
                 attestation: str | None = None) -> SignedRegistration:
    claim = PrivacyRegistration(miner=wallet.address, x25519_public_key=bytes(x25519(wallet).public_key).hex(),
                                policy_version=policy, tee_attestation=attestation, registered_at=now)
    return SignedRegistration(registration=claim, signature=sign_message(signer or wallet, claim))


def record(engine: Engine, signed: SignedRegistration, now: float, sender: str | None = None,
           tee_verifier: str | None = None) -> str | None:
    return registry.record_registration(engine, signed, sender, domain=DEFAULT_DOMAIN,
                                        policy_version=DEFAULT_POLICY_VERSION, tee_verifier=tee_verifier, now=now)


def privacy_miner(engine: Engine, clock: Clock, *, approved: bool = True) -> Wallet:
    wallet = Wallet.create()
    hello(engine, clock, wallet)
    assert record(engine, registration(wallet, clock.now), clock.now) is None
    if approved:
        registry.approve(engine, wallet.address, True, "test operator", "vetted", clock.now)
    return wallet


def request(wallet: Wallet, job_id: str, node: int, clock: Clock, *, signer: Wallet | None = None,
            ttl: float = 30.0) -> SignedKeyRequest:
    claim = KeyRequest(miner=wallet.address, job_id=job_id, node=node, nonce=os.urandom(32).hex(),
                       expires_at=clock.now + ttl)
    return SignedKeyRequest(request=claim, signature=sign_message(signer or wallet, claim))


@dataclass
class Network:
    """Three key-release nodes on one ledger, and a way to seal private jobs to them."""

    engine: Engine
    catalog: Catalog
    clock: Clock
    nodes: list[KeyReleaseNode]
    client_secret: bytes

    def job(self, condition: acc.Condition = acc.DEFAULT) -> tuple[str, PrivateEnvelope]:
        """A private text job recorded as the client does: billed fields in the clear, the rest sealed."""
        spec, job_id = self.catalog["smollm2-135m"], str(uuid.uuid4())
        params = TextParams(prompt=PROMPT, max_tokens=32, temperature=0.7, seed=3)
        JobBook(self.engine, self.clock).create_job(job_id, spec, metering(params), f"outputs/{job_id}.bin",
                                                    spec.private_queue, self.clock.now + 60)
        sealed = envelope.seal(self.key(job_id), params, job_id=job_id, model_id=spec.id,
                               acc_text=acc.canonical(condition), threshold=2,
                               nodes=[n.public_key for n in self.nodes])
        set_sealed(self.engine, job_id, sealed)
        return job_id, sealed

    def key(self, job_id: str) -> bytes:
        return envelope.data_key(self.client_secret, job_id)

    def secrets(self, job_id: str, sealed: PrivateEnvelope) -> list[str]:
        """Every key material of the job, as hex: what no log line or database row may hold."""
        found = [self.key(job_id).hex()]
        for node, share in zip(self.nodes, sealed.shares, strict=True):
            opened = envelope.Share.from_json(envelope.open_sealed(node._key, share.sealed))
            found += [opened.a.hex(), opened.b.hex()]
        return found


def set_sealed(engine: Engine, job_id: str, sealed: PrivateEnvelope) -> None:
    with session_scope(engine) as session:
        session.execute(update(Job).where(Job.id == job_id).values(sealed=sealed.model_dump(mode="json")))


def releases(engine: Engine, job_id: str) -> list[Release]:
    with session_scope(engine) as session:
        return list(session.scalars(select(Release).where(Release.job_id == job_id).order_by(Release.id)))


@pytest.fixture
def network(engine: Engine, catalog: Catalog, clock: Clock) -> Network:
    nodes = [KeyReleaseNode(i, PrivateKey.generate(), engine, POLICY, clock) for i in (1, 2, 3)]
    return Network(engine, catalog, clock, nodes, os.urandom(32))


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.INFO, logger="heurist.privacy"):
        yield caplog


def refused(net: Network, logs: pytest.LogCaptureFixture, node: int, signed: SignedKeyRequest, phrase: str,
            sealed: PrivateEnvelope, *, stored: bool = True) -> Release | None:
    """Ask node ``node``; assert a refusal saying ``phrase``, logged as a WARNING (and, for a registered
    requester, a row: ``stored``), with no key material."""
    job_id = signed.request.job_id
    before = len(releases(net.engine, job_id))
    with pytest.raises(Refused) as caught:
        net.nodes[node - 1].answer(signed.model_dump(mode="json"))
    assert phrase in caught.value.reason
    rows = releases(net.engine, job_id)
    assert len(rows) == before + stored
    row = rows[-1] if stored else None
    assert row is None or (row.node, row.released, row.reason) == (node, False, caught.value.reason)
    warnings = [r.getMessage() for r in logs.records if r.levelno == logging.WARNING]
    assert any(f"node {node} refused job {job_id}" in w and phrase in w for w in warnings), warnings
    for secret in net.secrets(job_id, sealed):
        assert secret not in logs.text
        assert all(secret not in r.reason for r in rows)
    return row


def grant_share(net: Network, wallet: Wallet, job_id: str, node: int) -> envelope.Share:
    grant = net.nodes[node - 1].answer(request(wallet, job_id, node, net.clock).model_dump(mode="json"))
    assert (grant.job_id, grant.node) == (job_id, node)
    return envelope.Share.from_json(envelope.open_sealed(x25519(wallet), grant.sealed))


# ------------------------------------------------------------------------------------------------ releases


def test_an_approved_privacy_miner_gets_two_shares_that_open_the_job(network: Network,
                                                                    logs: pytest.LogCaptureFixture) -> None:
    miner = privacy_miner(network.engine, network.clock)
    job_id, sealed = network.job()
    one, three = grant_share(network, miner, job_id, 1), grant_share(network, miner, job_id, 3)
    key = envelope.combine([one, three])
    assert key == network.key(job_id)
    clear = json.loads(envelope.open_params(key, sealed, job_id=job_id, model_id="smollm2-135m"))
    assert clear["prompt"] == PROMPT
    with pytest.raises(envelope.DecryptionError):  # one share is not the key
        envelope.open_params(envelope.combine([one]), sealed, job_id=job_id, model_id="smollm2-135m")
    rows = releases(network.engine, job_id)
    assert [(r.node, r.released, r.requester) for r in rows] == [(1, True, miner.address), (3, True, miner.address)]
    assert all(r.nonce for r in rows)
    assert sum(f"released its share of job {job_id}" in r.getMessage() for r in logs.records) == 2
    for secret in network.secrets(job_id, sealed):
        assert secret not in logs.text


def test_stake_and_reputation_conditions_read_the_ledger(network: Network, logs: pytest.LogCaptureFixture) -> None:
    miner = privacy_miner(network.engine, network.clock)
    staked = acc.parse({"kind": "and", "all": [{"kind": "privacy_enabled"}, {"kind": "min_stake", "hue": "100"},
                                               {"kind": "min_reputation", "value": 0.5}]})
    job_id, sealed = network.job(staked)
    refused(network, logs, 2, request(miner, job_id, 2, network.clock), "min_stake 100 HUE (0 HUE staked", sealed)
    with session_scope(network.engine) as session:
        session.add(Account(kind=AccountKind.STAKE, token=Token.ESHUE, owner=Wallet.create().address,
                            node=miner.address, ref="", balance=60 * ONE))
        session.add(Account(kind=AccountKind.STAKE, token=Token.HUE, owner=miner.address, node=miner.address,
                            ref="", balance=40 * ONE))
    facts, why_not, _ = read_facts(network.engine, miner.address, policy_version=DEFAULT_POLICY_VERSION,
                                   tee_required=False)
    assert facts is not None and why_not is None
    assert (facts.stake_units, facts.reputation, facts.privacy_enabled) == (100 * ONE, 0.5, True)
    assert grant_share(network, miner, job_id, 2).x == 2


# ------------------------------------------------------------------------------------------------ refusals


def test_a_public_miner_gets_no_share(network: Network, logs: pytest.LogCaptureFixture) -> None:
    public = Wallet.create()
    hello(network.engine, network.clock, public)  # a registered miner that never registered for privacy
    job_id, sealed = network.job()
    refused(network, logs, 1, request(public, job_id, 1, network.clock), "not a registered privacy miner",
            sealed, stored=False)  # anyone can sign with a fresh key: a log line, not a row


def test_unapproved_and_revoked_privacy_miners_get_no_share(network: Network,
                                                            logs: pytest.LogCaptureFixture) -> None:
    waiting = privacy_miner(network.engine, network.clock, approved=False)
    job_id, sealed = network.job()
    refused(network, logs, 1, request(waiting, job_id, 1, network.clock), "not privacy-enabled: not approved by "
            "an operator", sealed)
    registry.approve(network.engine, waiting.address, True, "alice", "", network.clock.now)
    assert grant_share(network, waiting, job_id, 1).x == 1
    registry.approve(network.engine, waiting.address, False, "bob", "left the program", network.clock.now)
    refused(network, logs, 2, request(waiting, job_id, 2, network.clock), "revoked by bob (left the program)",
            sealed)


def test_a_privacy_miner_outside_the_address_list_gets_no_share(network: Network,
                                                                logs: pytest.LogCaptureFixture) -> None:
    miner, other = privacy_miner(network.engine, network.clock), privacy_miner(network.engine, network.clock)
    listed = acc.parse({"kind": "and", "all": [{"kind": "privacy_enabled"},
                                               {"kind": "addresses", "addresses": [other.address]}]})
    job_id, sealed = network.job(listed)
    refused(network, logs, 1, request(miner, job_id, 1, network.clock),
            f"ACC not satisfied: addresses ({miner.address} is not among the 1 listed)", sealed)
    assert grant_share(network, other, job_id, 1).x == 1


def test_a_privacy_miner_under_the_minimum_reputation_gets_no_share(network: Network,
                                                                    logs: pytest.LogCaptureFixture) -> None:
    fresh = privacy_miner(network.engine, network.clock)  # no audits: reputation 0.5
    job_id, sealed = network.job(acc.parse({"kind": "min_reputation", "value": 0.9}))
    refused(network, logs, 3, request(fresh, job_id, 3, network.clock),
            "ACC not satisfied: min_reputation 0.9 (its reputation is 0.500)", sealed)


def test_a_replayed_request_is_refused(network: Network, logs: pytest.LogCaptureFixture) -> None:
    miner = privacy_miner(network.engine, network.clock)
    job_id, sealed = network.job()
    signed = request(miner, job_id, 1, network.clock)
    network.nodes[0].answer(signed.model_dump(mode="json"))
    # a log line only: a curious node replaying a miner's captured request forever grows nothing
    assert refused(network, logs, 1, signed, "replayed nonce", sealed, stored=False) is None
    # another process of the same node (same key, same database) refuses it too
    twin = KeyReleaseNode(1, network.nodes[0]._key, network.engine, POLICY, network.clock)
    with pytest.raises(Refused, match="replayed nonce"):
        twin.answer(signed.model_dump(mode="json"))


def test_a_forged_request_is_refused_and_burns_no_nonce(network: Network, logs: pytest.LogCaptureFixture) -> None:
    miner, forger = privacy_miner(network.engine, network.clock), Wallet.create()
    job_id, sealed = network.job()
    forged = request(miner, job_id, 2, network.clock, signer=forger)
    assert refused(network, logs, 2, forged, "bad signature", sealed, stored=False) is None  # a log line only
    honest = SignedKeyRequest(request=forged.request, signature=sign_message(miner, forged.request))
    assert network.nodes[1].answer(honest.model_dump(mode="json")).node == 2  # its nonce is still unused


def test_expired_and_far_future_requests_are_refused(network: Network, logs: pytest.LogCaptureFixture) -> None:
    miner = privacy_miner(network.engine, network.clock)
    job_id, sealed = network.job()
    # checked before the database is read: log lines only, so a flood of stale requests grows nothing
    refused(network, logs, 1, request(miner, job_id, 1, network.clock, ttl=-1), "expired", sealed, stored=False)
    refused(network, logs, 1, request(miner, job_id, 1, network.clock, ttl=0), "expired", sealed, stored=False)
    refused(network, logs, 1, request(miner, job_id, 1, network.clock, ttl=3600), "at most 60 s", sealed,
            stored=False)


def test_a_request_for_another_node_is_refused(network: Network, logs: pytest.LogCaptureFixture) -> None:
    miner = privacy_miner(network.engine, network.clock)
    job_id, sealed = network.job()
    refused(network, logs, 1, request(miner, job_id, 2, network.clock),
            "wrong node: the request is for node 2, this is node 1", sealed, stored=False)  # before any database read


def test_a_job_whose_acc_changed_in_the_database_is_refused(network: Network,
                                                            logs: pytest.LogCaptureFixture) -> None:
    insider, miner = privacy_miner(network.engine, network.clock), privacy_miner(network.engine, network.clock)
    job_id, sealed = network.job(acc.parse({"kind": "addresses", "addresses": [miner.address]}))
    widened = acc.parse({"kind": "addresses", "addresses": [miner.address, insider.address]})
    set_sealed(network.engine, job_id, sealed.model_copy(update={"acc": acc.canonical(widened)}))
    refused(network, logs, 1, request(insider, job_id, 1, network.clock),
            "the job's ACC is not the one its client sealed", sealed)


def test_public_and_unknown_jobs_are_refused(network: Network, logs: pytest.LogCaptureFixture) -> None:
    miner = privacy_miner(network.engine, network.clock)
    _, sealed = network.job()
    refused(network, logs, 1, request(miner, "no-such-job", 1, network.clock), "unknown job no-such-job", sealed)
    spec, public_id = network.catalog["smollm2-135m"], str(uuid.uuid4())
    JobBook(network.engine, network.clock).create_job(public_id, spec, TextParams(prompt="hi", max_tokens=4),
                                                      "outputs/x.json", spec.queue, network.clock.now + 60)
    refused(network, logs, 1, request(miner, public_id, 1, network.clock), "is not private", sealed)


def test_a_malformed_request_is_not_a_refusal(network: Network) -> None:
    with pytest.raises(MalformedRequest, match=r"request\.nonce"):
        network.nodes[0].answer({"request": {"miner": "0x" + "1" * 40, "job_id": "j", "node": 1, "nonce": "zz",
                                             "expires_at": 1.0}, "signature": "0x" + "a" * 130})
    with pytest.raises(MalformedRequest):
        network.nodes[0].answer(["not", "an", "object"])


# ------------------------------------------------------------------------------------------------ registry


def test_record_registration_refusals(engine: Engine, clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    miner, stranger = Wallet.create(), Wallet.create()
    caplog.set_level(logging.WARNING, logger="heurist.privacy")
    assert str(record(engine, registration(miner, clock.now), clock.now)).startswith("unknown miner")
    hello(engine, clock, miner)
    assert str(record(engine, registration(miner, clock.now, signer=stranger), clock.now)).startswith(
        "bad signature")
    assert str(record(engine, registration(miner, clock.now), clock.now, sender="miner-0xabc")).startswith(
        "wrong sender")
    assert str(record(engine, registration(miner, clock.now - 301), clock.now)).startswith("stale")
    assert sum("refused privacy registration" in r.getMessage() for r in caplog.records) == 4
    assert registry.status(engine, miner.address)["registration"] is None  # refusals store nothing
    assert record(engine, registration(miner, clock.now - 299), clock.now) is None
    with session_scope(engine) as session:
        session.add(MinerEvent(miner_address=miner.address, kind=MinerEventKind.BANNED, detail="t",
                               created_at=clock.now))
    assert record(engine, registration(miner, clock.now), clock.now) == "banned"


def test_copies_of_a_registration_judged_at_once_store_one_row(engine: Engine, clock: Clock) -> None:
    """The ledger judges inbox messages on many threads: 8 copies of one registration, and 8 changed ones, all
    released together, still store one row (the rest are unchanged or too soon a change)."""
    miner = Wallet.create()
    hello(engine, clock, miner)
    same = registration(miner, clock.now)
    changed = [registration(miner, clock.now + 1 + i, attestation=f"cmVwb3J0{i:02d}") for i in range(8)]
    answers = raced(*[partial(record, engine, signed, clock.now) for signed in [same] * 8 + changed])
    with session_scope(engine) as session:
        stored = session.scalars(select(Registration).where(Registration.address == miner.address)).all()
    assert len(stored) == 1, [(r.tee_attestation, r.registered_at) for r in stored]
    assert sum(a is None for a in answers) >= 1 and all(
        a is None or "changed again" in a or "older than" in a for a in answers)


def test_registration_from_its_own_broker_user_through_the_ledger(engine: Engine, ledger: Ledger,
                                                                   clock: Clock) -> None:
    miner = Wallet.create()
    sender = f"miner-{miner.address.lower()}"
    hello(engine, clock, miner, sender=sender)
    signed = registration(miner, clock.now)
    refusal = ledger.register_privacy(signed, "miner-0x" + "0" * 40, policy_version=DEFAULT_POLICY_VERSION)
    assert str(refusal).startswith("wrong sender")
    assert ledger.register_privacy(signed, sender, policy_version=DEFAULT_POLICY_VERSION) is None
    assert registry.status(engine, miner.address)["registration"]["tee_status"] == "absent"


def test_tee_status_approvals_and_status(engine: Engine, clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    miner = Wallet.create()
    hello(engine, clock, miner)
    with pytest.raises(registry.RegistryError, match="has no privacy registration"):
        registry.approve(engine, miner.address, True, "alice", "", clock.now)
    assert record(engine, registration(miner, clock.now, attestation="cmVwb3J0"), clock.now) is None
    assert registry.status(engine, miner.address)["registration"]["tee_status"] == TeeStatus.ABSENT
    assert record(engine, registration(miner, clock.now, attestation="cmVwb3J0"), clock.now,
                  tee_verifier="sgx-dcap") is None  # unchanged: no second row (a restart re-registers)
    later = clock.now + registry.CHANGE_EVERY_S + 1
    assert "changed again" in (record(engine, registration(miner, clock.now + 5, attestation="cmVwb3J0Mg=="),
                                      clock.now + 5) or "")
    with caplog.at_level(logging.WARNING, logger="heurist.privacy"):
        assert record(engine, registration(miner, later, attestation="cmVwb3J0Mg=="), later,
                      tee_verifier="sgx-dcap") is None
    assert "no TEE verifier named 'sgx-dcap' is available" in caplog.text
    registry.approve(engine, miner.address.lower(), True, "alice", "ok", clock.now)
    found = registry.status(engine, miner.address.lower())
    assert (found["address"], found["privacy_enabled"], found["registration"]["tee_status"]) == (
        miner.address, True, "refused")
    required = registry.status(engine, miner.address, DEFAULT_POLICY_VERSION, tee_required=True)
    assert required["why_not"] == "no verified TEE attestation (its attestation is refused)"
    newer = registry.status(engine, miner.address, "heurist-privacy-v2")
    assert "not the current 'heurist-privacy-v2'" in newer["why_not"]
    assert [r["address"] for r in registry.list_all(engine)] == [miner.address]
    with pytest.raises(registry.RegistryError, match="is not an address"):
        registry.status(engine, "0x123")


# ------------------------------------------------------------------------------------------------ HTTP


def test_the_http_api(network: Network) -> None:
    miner, public = privacy_miner(network.engine, network.clock), Wallet.create()
    hello(network.engine, network.clock, public)
    job_id, _ = network.job()
    node = network.nodes[2]
    with TestClient(create_app(node)) as http:
        assert http.get("/v1/health").json() == {"node": 3, "public_key": bytes(node.public_key).hex()}
        ok = http.post("/v1/share", json=request(miner, job_id, 3, network.clock).model_dump(mode="json"))
        assert ok.status_code == 200, ok.text
        share = envelope.Share.from_json(envelope.open_sealed(x25519(miner), ok.json()["sealed"]))
        assert share.x == 3
        no = http.post("/v1/share", json=request(public, job_id, 3, network.clock).model_dump(mode="json"))
        assert (no.status_code, no.json()) == (403, {"detail": no.json()["detail"]})
        assert "not a registered privacy miner" in no.json()["detail"] and "sealed" not in no.json()
        assert http.post("/v1/share", content=b"{not json").status_code == 422
        assert http.post("/v1/share", json={"request": {}}).status_code == 422
        big = b"{" + b" " * MAX_BODY_BYTES + b"}"
        assert http.post("/v1/share", content=big).status_code == 413
        chunks = iter([b"{", b" " * (MAX_BODY_BYTES // 2), b" " * (MAX_BODY_BYTES // 2), b"}"])  # no length
        assert http.post("/v1/share", content=chunks).status_code == 413


def test_a_body_too_deep_or_not_utf8_is_a_422_not_a_500(network: Network) -> None:
    """16 KB of "[" made ``json.loads`` raise ``RecursionError`` (not a ``ValueError``): a 500 and a traceback.
    It does under Python's default recursion limit (1000); py_ecc, imported for the signatures, raises the limit
    to 100,000, so the limit is set back to the default for that request."""
    limit = sys.getrecursionlimit()
    with TestClient(create_app(network.nodes[0]), raise_server_exceptions=False) as http:
        sys.setrecursionlimit(1000)
        try:
            deep = http.post("/v1/share", content=b"[" * MAX_BODY_BYTES)
        finally:
            sys.setrecursionlimit(limit)
        assert deep.status_code == 422, deep.text[:200]
        assert deep.json() == {"detail": "body: JSON nested too deeply (send a SignedKeyRequest)"}
        assert http.post("/v1/share", content=b"[" * MAX_BODY_BYTES).status_code == 422  # the raised limit
        for body in (b'{"request": "\xff\xfe"}', b"\xff" * 64):  # not UTF-8: UnicodeDecodeError
            answer = http.post("/v1/share", content=body)
            assert (answer.status_code, answer.json()) == (422, {"detail": "body: not JSON (send a SignedKeyRequest)"})
        nested = b'{"request": ' + b"[" * 900 + b"]" * 900 + b', "signature": "0x"}'  # JSON: not a request
        assert http.post("/v1/share", content=nested).status_code == 422


# ------------------------------------------------------------------------------------------------ CLI


def heurist(tmp_path: Path, db: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HEURIST_DATABASE_URL": db, "HEURIST_DATA_DIR": str(tmp_path / "data"), "COLUMNS": "250"}
    env.pop("HEURIST_KEYRELEASE_KEY_FILE", None)
    return subprocess.run([*HEURIST, *args], capture_output=True, text=True, timeout=120, env=env)


def last_json(done: subprocess.CompletedProcess[str]) -> Any:
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_cli(sqlite_url: str, clock: Clock, tmp_path: Path) -> None:
    """One backend: the commands' database work is the registry's, tested above on both."""
    upgrade(sqlite_url)
    engine = make_engine(sqlite_url)
    made = last_json(heurist(tmp_path, sqlite_url, "keyrelease", "init", "--index", "2", "--json"))
    assert made["index"] == 2 and len(made["public_key"]) == 64
    assert made["entry"] == {"url": "http://127.0.0.1:8702", "public_key": made["public_key"]}
    key_file = tmp_path / "data" / "keyrelease-2.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert bytes(load_key(key_file).public_key).hex() == made["public_key"]
    miner = Wallet.create()
    hello(engine, clock, miner)
    unregistered = heurist(tmp_path, sqlite_url, "privacy", "approve", miner.address)
    assert unregistered.returncode == 2 and "Traceback" not in unregistered.stderr
    assert "has no privacy registration" in " ".join(unregistered.stderr.split())
    assert record(engine, registration(miner, time.time()), time.time()) is None
    approved = last_json(heurist(tmp_path, sqlite_url, "privacy", "approve", miner.address, "--note", "vetted",
                                 "--operator", "carol", "--json"))
    assert (approved["address"], approved["approved"], approved["operator"]) == (miner.address, True, "carol")
    listed = last_json(heurist(tmp_path, sqlite_url, "privacy", "list", "--json"))
    assert [(r["address"], r["privacy_enabled"]) for r in listed] == [(miner.address, True)]
    revoked = heurist(tmp_path, sqlite_url, "privacy", "revoke", miner.address, "--note", "paused")
    assert revoked.returncode == 0 and "revoked" in revoked.stdout, revoked.stderr
    status = last_json(heurist(tmp_path, sqlite_url, "privacy", "status", miner.address, "--json"))
    assert (status["privacy_enabled"], status["approval"]["note"]) == (False, "paused")
    hostile = Wallet.create()  # a policy version is the miner's text: rich markup in it must print as it is
    with session_scope(engine) as session:
        session.add(Registration(address=hostile.address, x25519_public_key="00" * 32, policy_version="[/bold]x",
                                 signature="0x" + "00" * 65, tee_attestation=None, tee_status=TeeStatus.ABSENT,
                                 registered_at=time.time(), received_at=time.time()))
    for args in (("list",), ("status", hostile.address)):
        shown = heurist(tmp_path, sqlite_url, "privacy", *args)
        assert shown.returncode == 0 and "Traceback" not in shown.stderr, shown.stderr
        assert "[/bold]x" in shown.stdout and hostile.address in shown.stdout, shown.stdout
    engine.dispose()


def test_node_key_files(tmp_path: Path) -> None:
    path = tmp_path / "keyrelease-1.key"
    with pytest.raises(ConfigError, match=re.escape("run `heurist keyrelease init --index 1`")):
        load_key(path, 1)
    key = init_key(path, 1)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert bytes(init_key(path, 1)) == bytes(key)  # init again: the same key, never a new one
    path.chmod(0o644)
    with pytest.raises(ConfigError, match=re.escape(f"chmod 600 {path}")):
        load_key(path, 1)
    path.chmod(0o600)
    path.write_text("not hex")
    with pytest.raises(ConfigError, match="does not hold a 64-hex-digit X25519 key"):
        load_key(path, 1)


# ------------------------------------------------------------------------------------ what the database holds


def test_with_an_approver_only_its_signed_approvals_and_signed_registrations_count(
        network: Network, logs: pytest.LogCaptureFixture) -> None:
    """Whoever can write the database (the ledger's operator, a node) approves nobody without the approver key,
    and cannot put its own X25519 key under an approved miner's address."""
    approver, insider = Wallet.create(), Wallet.create()
    strict = Policy(DEFAULT_POLICY_VERSION, tee_required=False, domain=DEFAULT_DOMAIN, approver=approver.address)
    node = KeyReleaseNode(1, network.nodes[0]._key, network.engine, strict, network.clock)
    miner = privacy_miner(network.engine, network.clock, approved=False)
    job_id, _ = network.job()
    registry.approve(network.engine, miner.address, True, "insider", "unsigned", network.clock.now)
    with pytest.raises(Refused, match="not privacy-enabled: not approved"):
        node.answer(request(miner, job_id, 1, network.clock).model_dump(mode="json"))
    registry.approve(network.engine, miner.address, True, "ops", "signed", network.clock.now, signer=approver)
    grant = node.answer(request(miner, job_id, 1, network.clock).model_dump(mode="json"))
    assert envelope.open_sealed(x25519(miner), grant.sealed)["job_id"] == job_id
    registry.approve(network.engine, miner.address, False, "insider", "unsigned revoke", network.clock.now)
    assert node.answer(request(miner, job_id, 1, network.clock).model_dump(mode="json")).node == 1  # ignored too
    forged = registration(insider, network.clock.now + 1)  # the insider's key, filed under the miner's address
    with session_scope(network.engine) as session:
        session.add(Registration(address=miner.address, x25519_public_key=forged.registration.x25519_public_key,
                                 policy_version=DEFAULT_POLICY_VERSION, signature=forged.signature,
                                 tee_attestation=None, tee_status=TeeStatus.ABSENT,
                                 registered_at=network.clock.now + 1, received_at=network.clock.now + 1))
    grant = node.answer(request(miner, job_id, 1, network.clock).model_dump(mode="json"))
    assert envelope.open_sealed(x25519(miner), grant.sealed)["job_id"] == job_id  # still sealed to the miner


def test_refusals_before_the_registration_check_and_floods_store_nothing(network: Network,
                                                                         logs: pytest.LogCaptureFixture) -> None:
    miner = privacy_miner(network.engine, network.clock)
    job_id, _ = network.job()
    node = network.nodes[0]
    for _ in range(int(node.limits.BURST) + 5):  # a burst past the limit, all for unknown jobs
        with pytest.raises(Refused):
            node.answer(request(miner, "no-such-job", 1, network.clock).model_dump(mode="json"))
    with pytest.raises(Refused, match="rate limited"):
        node.answer(request(miner, job_id, 1, network.clock).model_dump(mode="json"))
    assert len(releases(network.engine, "no-such-job")) == node.limits.BURST  # the limited ones: log lines only
    network.clock.now += 5  # the bucket refills
    assert node.answer(request(miner, job_id, 1, network.clock).model_dump(mode="json")).node == 1


def test_registrations_that_add_nothing_or_come_too_often_are_not_stored(engine: Engine, clock: Clock) -> None:
    miner = Wallet.create()
    hello(engine, clock, miner)
    assert record(engine, registration(miner, clock.now), clock.now) is None
    for _ in range(5):  # every restart re-registers the same key: no new rows
        assert record(engine, registration(miner, clock.now + 1), clock.now + 1) is None
    low = registration(miner, clock.now + 2)
    zero = PrivacyRegistration(miner=miner.address, x25519_public_key="00" * 32, policy_version=DEFAULT_POLICY_VERSION,
                               registered_at=clock.now + 2)
    assert "low-order" in (record(engine, SignedRegistration(registration=zero, signature=sign_message(miner, zero)),
                                  clock.now + 2) or "")
    assert low.registration.registered_at == clock.now + 2
    with session_scope(engine) as session:
        assert len(session.scalars(select(Registration).where(Registration.address == miner.address)).all()) == 1


def test_a_trusted_auditor_records_its_registration_once_across_restarts(engine: Engine, clock: Clock) -> None:
    auditor = Wallet.create()  # no hello: an auditor is no miner; it writes its own row, as the ledger would
    assert registry.record_trusted(engine, registration(auditor, clock.now), clock.now)
    assert not registry.record_trusted(engine, registration(auditor, clock.now + 60), clock.now + 60)  # a restart
    with session_scope(engine) as session:
        assert len(session.scalars(select(Registration).where(Registration.address == auditor.address)).all()) == 1
    assert registry.status(engine, auditor.address)["why_not"] == "not approved by an operator " \
        "(`heurist privacy approve ADDR`)"
