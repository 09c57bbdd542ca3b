"""Every signed message is EIP-712 in the network's domain (issue 13, finding 6): a signature made for one
network, or for another message type, or as a wallet's ``personal_sign`` of the same JSON, is refused.

Before, completions, hellos and heartbeats were EIP-191 over bare canonical JSON: a hello signed for one network
registered on another, and a dApp's ``personal_sign`` of crafted JSON was a valid Heurist message. Each message
type is tried here against the ledger's own checks (SQLite and PostgreSQL) and the miner's admission.
"""

from __future__ import annotations

import time
import uuid

import pytest
from sqlalchemy import Engine

from heurist.catalog import Catalog, load_catalog
from heurist.errors import JobRefused
from heurist.identity import Wallet
from heurist.jobs import (
    Failure,
    Heartbeat,
    JobMessage,
    JobState,
    MinerHello,
    SignedCompletion,
    SignedHeartbeat,
    SignedHello,
    TextParams,
    canonical_json,
)
from heurist.ledger.service import Ledger
from heurist.ledger.tables import Reason
from heurist.ledger.uptime import EpochClock, UptimeBook
from heurist.settings import Settings
from heurist.signing import (
    DEFAULT_CHAIN_ID,
    Domain,
    delegation_signer,
    message_signer,
    sign_delegation,
    sign_failure,
    sign_job,
    sign_message,
)
from heurist.storage.backend import ObjectStore
from tests.fixtures.ledger import DEVICE, Clock, completion, text_job
from workers.miner.admission import Admission, Origin

HOME, OTHER = Domain(chain_id=7_777), Domain(chain_id=8_888)
CONTRACT = "0x" + "11" * 20
NOW = time.time()


def _messages(wallet: Wallet) -> dict[str, object]:
    job_id = str(uuid.uuid4())
    return {
        "job": JobMessage(job_id=job_id, model_id="smollm2-135m", output_url="http://127.0.0.1:1/o",
                          deadline_at=time.time() + 600, params=TextParams(prompt="hi", max_tokens=4)),
        "failure": Failure(job_id=job_id, miner=wallet.address, error="boom", failed_at=NOW),
        "hello": MinerHello(miner=wallet.address, models=["smollm2-135m"], queues=[], device=DEVICE, started_at=NOW),
        "heartbeat": Heartbeat(miner=wallet.address, sent_at=NOW),
    }


@pytest.mark.parametrize("kind", ["job", "failure", "hello", "heartbeat"])
def test_a_signature_holds_only_on_its_own_network_and_type(kind: str) -> None:
    wallet = Wallet.create()
    message = _messages(wallet)[kind]
    signature = sign_message(wallet, message, HOME)  # type: ignore[arg-type]
    assert message_signer(message, signature, HOME) == wallet.address  # type: ignore[arg-type]
    for elsewhere in (OTHER, Domain(chain_id=HOME.chain_id, verifying_contract=CONTRACT),
                      Domain(chain_id=HOME.chain_id, version="1"), Domain(chain_id=HOME.chain_id, name="Other")):
        assert message_signer(message, signature, elsewhere) != wallet.address  # type: ignore[arg-type]
    personal = wallet.sign(canonical_json(message))  # type: ignore[arg-type]  # a dApp's personal_sign
    assert message_signer(message, personal, HOME) != wallet.address  # type: ignore[arg-type]
    for other_kind, other in _messages(wallet).items():  # never valid as another message type
        if other_kind != kind:
            assert message_signer(other, signature, HOME) != wallet.address  # type: ignore[arg-type]


def test_a_delegation_holds_only_on_its_own_network() -> None:
    operator, worker = Wallet.create(), Wallet.create()
    vouch = sign_delegation(operator, worker.address, HOME)
    assert delegation_signer(worker.address, vouch, HOME) == operator.address
    assert delegation_signer(worker.address, vouch, OTHER) != operator.address
    assert delegation_signer(Wallet.create().address, vouch, HOME) != operator.address


def test_the_domain_comes_from_settings() -> None:
    assert Domain.of(Settings(_env_file=None)).chain_id == DEFAULT_CHAIN_ID  # type: ignore[call-arg]
    chosen = Settings(_env_file=None, chain_id=8_888, verifying_contract=CONTRACT)  # type: ignore[call-arg]
    assert Domain.of(chosen) == Domain(chain_id=8_888, verifying_contract=CONTRACT)


@pytest.fixture
def catalog() -> Catalog:
    return load_catalog()


def test_the_ledger_refuses_every_message_signed_for_another_network(engine: Engine, catalog: Catalog,
                                                                      object_store: ObjectStore) -> None:
    ledger = Ledger(engine, catalog, object_store, domain=HOME)
    uptime = UptimeBook(engine, EpochClock(interval_s=10, epoch_s=100), domain=HOME)
    miner = Wallet.create()
    hello = _messages(miner)["hello"]
    assert isinstance(hello, MinerHello)
    replayed = ledger.register_miner(SignedHello(hello=hello, signature=sign_message(miner, hello, OTHER)))
    assert (replayed.accepted, replayed.reason) == (False, Reason.BAD_SIGNATURE)
    assert ledger.register_miner(SignedHello(hello=hello, signature=sign_message(miner, hello, HOME))).accepted

    beat = Heartbeat(miner=miner.address, sent_at=time.time())
    refused = uptime.record(SignedHeartbeat(heartbeat=beat, signature=sign_message(miner, beat, OTHER)))
    assert (refused.accepted, refused.reason) == (False, Reason.BAD_SIGNATURE)
    assert uptime.record(SignedHeartbeat(heartbeat=beat, signature=sign_message(miner, beat, HOME))).accepted

    job = text_job(ledger, catalog, Clock(now=time.time()))
    claim = completion(job, miner, b"{}")
    verdict = ledger.record_completion(SignedCompletion(completion=claim, signature=sign_message(miner, claim, OTHER)))
    assert (verdict.accepted, verdict.reason) == (False, Reason.BAD_SIGNATURE)
    failure = Failure(job_id=job.id, miner=miner.address, error="boom", failed_at=time.time())
    assert not ledger.report_failure(sign_failure(miner, failure, OTHER))
    view = ledger.reader.job(job.id)
    assert view is not None and view.state is JobState.QUEUED  # neither moved the job
    assert ledger.report_failure(sign_failure(miner, failure, HOME))  # the same report, made for this network


def test_a_miner_refuses_a_job_signed_for_another_network(catalog: Catalog) -> None:
    dispatcher = Wallet.create()
    admission = Admission(dispatcher.address, Origin.of("http://127.0.0.1:1"),
                          {"smollm2-135m": catalog["smollm2-135m"]}, domain=HOME)
    job = _messages(dispatcher)["job"]
    assert isinstance(job, JobMessage)
    with pytest.raises(JobRefused, match="bad_signature"):
        admission.admit(sign_job(dispatcher, job, OTHER).model_dump(mode="json"))
    assert admission.admit(sign_job(dispatcher, job, HOME).model_dump(mode="json")).job_id == job.job_id
