"""Credit is not stolen through callbacks (issue 12, attack 3). A job message used to carry the ledger's tasks as
Celery ``link``/``link_error``, and the worker obeyed whatever the message said: an attacker republished a job with
``link`` pointed at a queue of its own, received the honest miner's signed completion there, re-signed the claim
with its own key and was credited.

Now no heurist worker applies callbacks, errbacks, chains, chords, groups or reply-to from a message
(``heurist.unlinked``), and the miner sends its signed completion (or signed failure) to the ledger's inbox
itself. The attacker, with raw AMQP on its own broker user: republishes a genuine signed job carrying callbacks
into its queue (the broker refuses; put there anyway, the job runs, as it should: it is genuine, and the
completion reaches only the ledger), the same with a forged job carrying errbacks (refused, and the refusal
sends nothing to it either), sends a completion to the ledger through its inbox carrying an immutable ``link``
to ``replay_job`` (no forced audit), and failure reports meant to fail a victim's job.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kombu import Exchange, Queue

from heurist.access import BrokerAccess
from heurist.audit.middleware import audit_queue
from heurist.client import Client
from heurist.embedded import EmbeddedNetwork, wait_until
from heurist.identity import Wallet
from heurist.jobs import Failure, ImageParams, JobState
from heurist.signing import sign_failure, sign_job
from tasks.names import AUDIT_JOB, RECORD_COMPLETION, RECORD_FAILURE
from tests.adversary.raw import Attacker, recorded_job, smuggle, task_message
from tests.fixtures.broker import ready

# Each module starts its own network (about 1-4 min here): run by `make test-slow`, and so by CI.
pytestmark = pytest.mark.slow

MODEL = "tiny-sd"
AUDIT_QUEUE = audit_queue("audit", MODEL)


@pytest.fixture(scope="module")
def network_settings() -> dict[str, Any]:
    return {"audit_base_rate": 0.0, "audit_new_miner_rate": 0.0, "audit_suspicious_rate": 0.0}


@pytest.fixture(scope="module")
def honest(network: EmbeddedNetwork, client: Client, access: BrokerAccess) -> str:
    wallet = network.start_miner([MODEL], name="honest",
                                 broker_url=lambda address: access.add_miner(address).broker_url)
    wait_until(lambda: client.ledger.is_registered(wallet.address), 120, "the honest miner to register",
               check=network.check_alive)
    return wallet.address


@pytest.fixture
def inbox(client: Client) -> Iterator[str]:
    """The attacker's own exchange and queue, named inside the tier namespace that miner users may write to today,
    as in the attack. The trusted side declares them for the test (miners will not be allowed to declare
    anything), so that a message sent there stays there to be counted."""
    name = f"vram8.attacker-{uuid.uuid4().hex[:8]}"
    queue = Queue(name, Exchange(name, "direct"), routing_key=name)
    with client.app.connection_for_write() as conn:
        queue.bind(conn.default_channel).declare()
    yield name
    with client.app.connection_for_write() as conn:
        queue.bind(conn.default_channel).delete()


def to(inbox: str, task: str, args: list[Any] | None = None, immutable: bool = False) -> dict[str, Any]:
    """A Celery signature routed to the attacker's queue."""
    return {"task": task, "args": args or [], "kwargs": {}, "subtask_type": None, "immutable": immutable,
            "options": {"queue": inbox, "exchange": inbox, "routing_key": inbox}}


def callbacks_to(inbox: str) -> dict[str, Any]:
    return {"callbacks": [to(inbox, RECORD_COMPLETION)], "errbacks": [to(inbox, RECORD_FAILURE)],
            "chain": [to(inbox, RECORD_COMPLETION)]}


def logged(network: EmbeddedNetwork, worker: str, line: str, times: int = 1) -> None:
    wait_until(lambda: (network.logs / f"{worker}.log").read_text().count(line) >= times, 60,
               f"the {worker} to log {line!r}", check=network.check_alive)


def assert_nothing_for_the_attacker(client: Client, attacker: Attacker, honest: str) -> None:
    assert not client.ledger.is_registered(attacker.wallet.address)
    earners = {m.address for m in client.ledger.miner_points()}
    assert attacker.wallet.address not in earners and earners <= {honest}


def test_a_republished_job_with_callbacks_to_the_attacker_credits_the_honest_miner(
        network: EmbeddedNetwork, client: Client, honest: str, attacker: Attacker, inbox: str) -> None:
    params = ImageParams(prompt="a lighthouse", width=64, height=64, steps=4, guidance=7.5, seed=21)
    signed, _ = recorded_job(client, MODEL, params)
    smuggle(client, attacker, client.catalog[MODEL].queue, signed.model_dump(mode="json"), signed.job.job_id,
            callbacks_to(inbox), reply_to=inbox)
    [view] = client.wait_all([signed.job.job_id], timeout=120)
    assert view.state is JobState.COMPLETED and view.miner == honest  # genuine, so it runs; credited to its miner
    after = client.submit_image("a harbour", model=MODEL, steps=4, seed=22).result(timeout=120)
    assert after.state is JobState.COMPLETED and after.miner == honest
    assert ready(client, inbox) == 0, "the honest miner's completion reached the attacker's queue"
    logged(network, "honest", f"[{signed.job.job_id}]: ignoring callbacks, chain, errbacks")
    smuggle(client, attacker, client.catalog[MODEL].queue, signed.model_dump(mode="json"), signed.job.job_id)
    logged(network, "honest", f"refused job message {signed.job.job_id}: replayed")
    assert client.ledger.points_entries(signed.job.job_id) == 1
    assert_nothing_for_the_attacker(client, attacker, honest)


def test_a_refused_job_sends_nothing_to_its_errbacks(network: EmbeddedNetwork, client: Client, honest: str,
                                                     attacker: Attacker, inbox: str) -> None:
    """A refusal is Celery's ``Reject``: its failure report, built by the worker from the raw message, fired the
    message's errbacks and chain too until ``UnlinkedRequest`` dropped them."""
    params = ImageParams(prompt="a red fox", width=64, height=64, steps=4, guidance=7.5, seed=23)
    signed, _ = recorded_job(client, MODEL, params)
    forged = sign_job(attacker.wallet, signed.job).model_dump(mode="json")
    smuggle(client, attacker, client.catalog[MODEL].queue, forged, signed.job.job_id, callbacks_to(inbox),
            reply_to=inbox)
    logged(network, "honest", f"refused job message {signed.job.job_id}: bad_signature")
    client._send(signed, client.catalog[MODEL].queue)  # the genuine one: the victim still gets its answer
    [view] = client.wait_all([signed.job.job_id], timeout=120)
    assert view.state is JobState.COMPLETED and view.miner == honest
    assert ready(client, inbox) == 0, "the refusal was reported to the attacker's queue"
    assert_nothing_for_the_attacker(client, attacker, honest)


def test_the_ledger_ignores_a_link_to_replay_job(network: EmbeddedNetwork, client: Client, honest: str,
                                                 attacker: Attacker) -> None:
    """A completion sent to the ledger with an immutable ``link`` to ``replay_job`` on the audit queue: had the
    ledger obeyed, the trusted side would have queued a forced audit of a victim's job (framing its miner)."""
    victim = client.submit_image("a lighthouse", model=MODEL, steps=4, seed=24).result(timeout=120)
    link = {"task": AUDIT_JOB, "args": [victim.job_id], "kwargs": {}, "subtask_type": None, "immutable": True,
            "options": {"queue": AUDIT_QUEUE}}
    message = task_message(RECORD_COMPLETION, [{"completion": "junk"}], embed={"callbacks": [link] * 3})
    attacker.to_ledger(message)
    logged(network, "ledger", "poison message kept in")
    after = client.submit_image("a harbour", model=MODEL, steps=4, seed=25).result(timeout=120)
    assert after.state is JobState.COMPLETED and after.miner == honest
    assert ready(client, AUDIT_QUEUE) == 0, "the ledger queued the attacker's replay_job"
    logged(network, "ledger", f"[{message[0]['id']}]: ignoring callbacks")
    assert client.ledger.points_entries(victim.job_id) == 1
    assert_nothing_for_the_attacker(client, attacker, honest)


def test_failure_reports_by_anyone_but_a_registered_miner_fail_nothing(
        network: EmbeddedNetwork, client: Client, honest: str, attacker: Attacker) -> None:
    """``link_error`` used to reach the ledger as ``record_failure(job_id)``, unsigned: anyone could fail anyone's
    job. Now a report is a ``SignedFailure`` from a registered, unbanned miner, or it is ignored."""
    params = ImageParams(prompt="a quiet harbour", width=64, height=64, steps=4, guidance=7.5, seed=26)
    signed, _ = recorded_job(client, MODEL, params)
    job_id = signed.job.job_id

    def report(wallet: Wallet, miner: str) -> dict[str, Any]:
        failure = Failure(job_id=job_id, miner=miner, error="boom", failed_at=0.0)
        return sign_failure(wallet, failure).model_dump(mode="json")

    other = Wallet.create()
    for args in ([job_id], [report(attacker.wallet, attacker.wallet.address)], [report(other, honest)]):
        attacker.to_ledger(task_message(RECORD_FAILURE, args))
    logged(network, "ledger", "poison message kept in", times=2)
    logged(network, "ledger", f"ignored failure report for job {job_id} claiming miner", times=2)
    view = client.ledger.job(job_id)
    assert view is not None and view.state is JobState.QUEUED
    client._send(signed, client.catalog[MODEL].queue)
    [view] = client.wait_all([job_id], timeout=120)
    assert view.state is JobState.COMPLETED and view.miner == honest
    assert client.ledger.points_entries(job_id) == 1
    assert_nothing_for_the_attacker(client, attacker, honest)
