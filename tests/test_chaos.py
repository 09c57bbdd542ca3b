"""Nothing is lost on a crash: a miner killed mid-job leaves the job to another miner, credited once."""

from __future__ import annotations

import pytest

from heurist.client import Client
from heurist.embedded import EmbeddedNetwork, wait_until
from heurist.jobs import JobState

pytestmark = pytest.mark.slow


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
