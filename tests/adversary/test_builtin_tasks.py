"""A miner sends Celery's built-in ``celery.group`` into the ledger's queue, asking the trusted ledger to publish
six ``replay_job`` messages for an honest miner's job (forced audits: about 116 s of auditor CPU each, and a way
to frame that miner). The ledger runs its own four tasks and nothing else (``heurist.celery_app.only_tasks``):
the message is rejected and logged, no audit is queued, and the network keeps crediting honest work. The same
message sent into a tier queue is refused by the honest miner, which runs only ``run_job``.

The attack uses only what a miner has: its own broker user from ``heurist broker add-miner`` (permitted to
publish into the ``ledger`` exchange, as its completions do) and raw kombu.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from amqp.exceptions import AccessRefused
from kombu import Connection, Producer

from heurist.access import BrokerAccess
from heurist.access.backend import inbox_exchange, inbox_name
from heurist.audit.middleware import audit_queue
from heurist.client import Client
from heurist.embedded import EmbeddedNetwork, wait_until
from heurist.identity import Wallet
from heurist.jobs import JobState
from heurist.ledger.audit_service import AuditLedger
from tasks.names import AUDIT_JOB
from tests.fixtures.broker import ready

AUDIT_QUEUE = audit_queue("audit", "tiny-sd")


@pytest.fixture(scope="module")
def network_settings() -> dict[str, Any]:
    """No job is ever sampled: any message on an audit queue is the attacker's doing."""
    return {"audit_base_rate": 0.0, "audit_new_miner_rate": 0.0, "audit_suspicious_rate": 0.0}


def _group_of_replays(job_id: str, copies: int) -> tuple[dict[str, Any], list[Any]]:
    """A Celery protocol-2 ``celery.group`` message whose members are ``replay_job(job_id)`` on the audit queue."""
    group_id, task_id = str(uuid.uuid4()), str(uuid.uuid4())
    member = {"task": AUDIT_JOB, "args": [job_id], "kwargs": {}, "options": {"queue": AUDIT_QUEUE},
              "subtask_type": None, "immutable": False}
    results = [[[str(uuid.uuid4()), None], None] for _ in range(copies)]
    headers = {"lang": "py", "task": "celery.group", "id": task_id, "root_id": task_id, "parent_id": None,
               "group": None, "retries": 0, "eta": None, "expires": None, "timelimit": [None, None],
               "argsrepr": "(...)", "kwargsrepr": "{}", "origin": "attacker", "ignore_result": True}
    args = [[member] * copies, [[group_id, None], results], group_id, []]
    return headers, [args, {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]


def _send_group(broker_url: str, exchange: str, job_id: str, user_id: str | None = None,
                routing_key: str | None = None) -> None:
    """Publish the group as the attacker: raw kombu on its own broker user, declaring nothing."""
    headers, body = _group_of_replays(job_id, copies=6)
    with Connection(broker_url, transport_options={"confirm_publish": True}) as conn:  # refusals surface here
        Producer(conn.channel()).publish(body, exchange=exchange, routing_key=routing_key or exchange, headers=headers,
                                         serializer="json", retry=False, user_id=user_id)


def _handled(network: EmbeddedNetwork, client: Client, worker: str) -> str:
    """Wait until ``worker`` refused the group or the audit queue filled; the refusal line to look for."""
    refused = "Received unregistered task of type 'celery.group'"
    log = network.logs / f"{worker}.log"
    wait_until(lambda: refused in log.read_text() or ready(client, AUDIT_QUEUE) > 0, 30,
               f"the {worker} to handle the message", check=network.check_alive)
    return refused


def test_celery_group_sent_to_the_ledger_is_refused(network: EmbeddedNetwork, client: Client,
                                                     access: BrokerAccess, honest: str) -> None:
    victim = client.submit_image("a lighthouse", model="tiny-sd", steps=8, seed=1).result(timeout=120)
    assert victim.state is JobState.COMPLETED and victim.miner == honest
    attacker = access.add_miner(Wallet.create().address)
    _send_group(attacker.broker_url, inbox_exchange(attacker.user), victim.job_id, attacker.user,  # its way to the
                inbox_name(attacker.user))  # ledger
    refused = _handled(network, client, "ledger")
    assert ready(client, AUDIT_QUEUE) == 0, "the ledger published the attacker's replay_job messages"
    assert refused in (network.logs / "ledger.log").read_text()
    after = client.submit_image("a harbour", model="tiny-sd", steps=8, seed=2).result(timeout=120)
    assert after.state is JobState.COMPLETED and after.miner == honest  # the ledger keeps working
    assert ready(client, AUDIT_QUEUE) == 0
    assert not client.ledger.is_registered(attacker.address)
    assert attacker.address not in {m.address for m in client.ledger.miner_points()}
    audits = AuditLedger(client.ledger.engine)
    assert audits.standing(honest).passed == audits.standing(honest).failed == 0  # nobody audited, nobody framed
    assert client.ledger.points_entries(victim.job_id) == 1


def test_celery_group_sent_into_a_tier_queue_is_refused_by_the_miner(network: EmbeddedNetwork, client: Client,
                                                                     access: BrokerAccess, honest: str) -> None:
    victim = client.submit_image("a lighthouse", model="tiny-sd", steps=8, seed=3).result(timeout=120)
    attacker = access.add_miner(Wallet.create().address)
    with pytest.raises(AccessRefused):  # miners may not write a tier queue (forged jobs): the broker refuses it
        _send_group(attacker.broker_url, "vram8.tiny-sd", victim.job_id)
    # The trusted side could (a bug, a compromised client): the honest miner still runs only run_job.
    _send_group(network.settings().resolved_broker_url(), "vram8.tiny-sd", victim.job_id)
    refused = _handled(network, client, "honest")
    assert refused in (network.logs / "honest.log").read_text()
    assert ready(client, AUDIT_QUEUE) == 0
    after = client.submit_image("a harbour", model="tiny-sd", steps=8, seed=4).result(timeout=120)
    assert after.state is JobState.COMPLETED and after.miner == honest  # the miner keeps serving
    assert not client.ledger.is_registered(attacker.address)
