"""Nothing is lost on a crash: a miner killed mid-job leaves the job to another miner, credited once; a ledger
killed again and again while it drains a backlog credits every job once and loses no audit sample."""

from __future__ import annotations

import time
from typing import Any

import pytest

from heurist.client import Client
from heurist.embedded import EmbeddedNetwork, wait_until
from heurist.jobs import JobState

pytestmark = pytest.mark.slow
JOBS, KILLS = 60, 6


@pytest.fixture(scope="module")
def network_settings() -> dict[str, Any]:
    """Every accepted job is sampled, so a lost sample is a job missing from the audit queue."""
    return {"audit_base_rate": 1.0, "audit_new_miner_rate": 1.0, "audit_seed": 1, "outbox_interval_s": 1.0}


def _queue_depth(client: Client, queue: str) -> int:
    """Messages ready in ``queue`` (a message a worker holds unacked is not counted)."""
    with client.app.connection_for_write() as conn:
        return int(conn.default_channel.queue_declare(queue, passive=True).message_count)


def _start(network: EmbeddedNetwork, client: Client, name: str) -> str:
    wallet = network.start_miner(["tiny-sd"], name=name)
    wait_until(lambda: client.ledger.is_registered(wallet.address), 300, f"miner {name} to register",
               check=network.check_alive)
    return wallet.address


def test_miner_killed_mid_job_is_redelivered_and_credited_once(network: EmbeddedNetwork, client: Client) -> None:
    first = _start(network, client, "doomed")
    spec = client.catalog["tiny-sd"]
    handle = client.submit_image("a long job", model="tiny-sd", width=256, height=256, steps=50, seed=5)
    wait_until(lambda: _queue_depth(client, spec.queue) == 0, 60, "the doomed miner to take the job")
    network.kill("doomed")  # SIGKILL mid-job: no ack, no completion, no failure report
    assert handle.state() is JobState.QUEUED
    second = _start(network, client, "rescuer")
    result = handle.result(timeout=300)
    assert result.state is JobState.COMPLETED and result.miner == second != first
    assert client.ledger.points_entries(handle.id) == 1


def _audit_requests(client: Client, queue: str) -> list[str]:
    ids = []
    with client.app.connection_for_write() as conn:
        simple = conn.SimpleQueue(queue)
        while True:
            try:
                message = simple.get(block=True, timeout=1)
            except simple.Empty:
                return ids
            ids.append(message.payload[0][0])
            message.ack()


def test_ledger_killed_while_draining_loses_no_credit_and_no_audit_sample(network: EmbeddedNetwork,
                                                                          client: Client) -> None:
    """The issue's run: the ledger SIGKILLed 6 times while it drains 60 completions. Before the outbox, 3 of 55
    samples were lost (drawn after the credit committed); now every credited job is in the audit queue."""
    _start(network, client, "steady")
    network.kill("ledger")  # completions pile up while no ledger runs
    spec = client.catalog["tiny-sd"]
    handles = [client.submit_image(f"job {i}", model="tiny-sd", width=32, height=32, steps=2, seed=i)
               for i in range(JOBS)]
    wait_until(lambda: _queue_depth(client, spec.queue) == 0, 300, "the miner to take every job")
    time.sleep(5)  # its last completions reach the ledger's queue
    for _ in range(KILLS):
        network.start_ledger()
        time.sleep(2.5)  # it starts (about 2 s) and drains part of the backlog
        network.kill("ledger")
    network.start_ledger()
    results = client.wait_all([h.id for h in handles], timeout=300)
    assert [v.state for v in results] == [JobState.COMPLETED] * JOBS
    assert all(client.ledger.points_entries(h.id) == 1 for h in handles)
    sampled = set(_audit_requests(client, f"audit.{spec.id}"))
    assert {h.id for h in handles} <= sampled  # the module's other jobs were sampled too
