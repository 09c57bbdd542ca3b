"""Nothing is lost when the broker's network fails (issue 14, items 1 and 3), short faults.

Every process (ledger, miner, client) reaches RabbitMQ through a ``TcpProxy`` the test controls; the machine's
RabbitMQ is never touched. Each scenario asserts 0 jobs lost, 0 credited twice, every job terminal well within
its deadline, and the ledger and the miner still the same processes. Long outages: ``test_broker_outage.py``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kombu import Connection

from heurist.client import Client
from heurist.confirms import BrokerUnavailableError
from heurist.embedded import EmbeddedNetwork
from heurist.gateway.errors import from_heurist
from heurist.jobs import JobState
from heurist.storage.seaweed import SeaweedServer
from tests.fixtures.broker_faults import Run, fast_image, pids, proxied_network, start_proxied_miner
from tests.fixtures.proxy import TcpProxy

PROBE_QUEUE = "faults.probe"
GRACE_S = 120.0  # far inside a tiny-sd job's deadline (600 s and more)


@pytest.fixture(scope="module")
def proxy() -> Iterator[TcpProxy]:
    with TcpProxy(5672) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def network(proxy: TcpProxy, rabbit_url: str, module_postgres_url: str, seaweed: SeaweedServer,
            shared_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNetwork]:
    with proxied_network(proxy, rabbit_url, module_postgres_url, seaweed, shared_models_dir,
                         tmp_path_factory.mktemp("net")) as net:
        yield net


@pytest.fixture(scope="module")
def client(network: EmbeddedNetwork) -> Iterator[Client]:
    with Client(network.settings()) as c:
        yield c


@pytest.fixture(scope="module")
def miner(network: EmbeddedNetwork, client: Client, proxy: TcpProxy) -> dict[str, int]:
    """A registered miner behind the proxy; the pids of the network's processes (none may be restarted)."""
    start_proxied_miner(network, client, proxy)
    return pids(network)


@pytest.fixture
def healed(proxy: TcpProxy) -> Iterator[TcpProxy]:
    """The proxy, passing traffic again after the test whatever happened."""
    try:
        yield proxy
    finally:
        proxy.heal()


def _ready(rabbit_url: str, queue: str) -> int:
    """Messages in ``queue``, read directly from RabbitMQ (not through the proxy)."""
    with Connection(rabbit_url) as conn:
        return int(conn.default_channel.queue_declare(queue, passive=True).message_count)


def test_a_submit_behind_a_partition_returns_once_the_broker_has_it(client: Client, miner: dict[str, int],
                                                                   healed: TcpProxy, rabbit_url: str) -> None:
    """Without confirms the publish returned in ~1 ms into a swallowing socket and the message was gone."""
    client.app.send_task("faults.probe", queue=PROBE_QUEUE)  # the client's connection is up before the fault
    with Connection(rabbit_url) as conn:
        conn.default_channel.queue_purge(PROBE_QUEUE)
    healed.partition()
    returned: list[float] = []
    started = time.monotonic()

    def publish() -> None:
        client.app.send_task("faults.probe", queue=PROBE_QUEUE)
        returned.append(time.monotonic() - started)

    publisher = threading.Thread(target=publish)
    publisher.start()
    publisher.join(timeout=3.0)
    assert not returned, f"the publish returned after {returned[0]:.3f}s while nothing reached the broker"
    healed.heal()  # the connections that lived through the partition are reset; the publish is retried
    publisher.join(timeout=30)
    assert returned and returned[0] >= 3.0
    assert _ready(rabbit_url, PROBE_QUEUE) >= 1  # the broker has it: not lost


def test_a_publish_never_confirmed_raises_and_the_job_is_recorded_failed(network: EmbeddedNetwork,
                                                                         miner: dict[str, int],
                                                                         healed: TcpProxy) -> None:
    settings = network.settings().model_copy(update={"broker_confirm_timeout_s": 1.0, "broker_publish_timeout_s": 0.0})
    with Client(settings) as impatient:
        impatient.app.send_task("faults.probe", queue=PROBE_QUEUE)  # connected before the fault
        healed.partition()
        started = time.monotonic()
        with pytest.raises(BrokerUnavailableError, match="did not confirm") as raised:
            impatient.submit(fast_image("never queued", 1), job_id=(job_id := "f" * 32))
        assert time.monotonic() - started < 8.0  # bounded: one try, a 1 s confirm wait (and 1 s socket waits)
        assert raised.value.public == "the job queue is unavailable; try again in a minute"
        answer = from_heurist(raised.value)  # what the gateway answers
        assert (answer.status, answer.code) == (503, "queue_unavailable")
        view = impatient.ledger.job(job_id)
        assert view is not None and view.state is JobState.FAILED and "could not enqueue" in (view.error or "")


def test_partition_while_submitting(network: EmbeddedNetwork, client: Client, miner: dict[str, int],
                                    healed: TcpProxy) -> None:
    """A 10 s partition mid-run: submits block and then succeed (or are refused and recorded), none lost."""
    run, stop = Run(client), threading.Event()
    submitters = run.submit_while(stop, threads=3, every_s=0.5, limit=6)
    time.sleep(1.0)
    healed.partition()
    time.sleep(10.0)
    healed.heal()
    healed_at = time.monotonic()
    for submitter in submitters:
        submitter.join(timeout=60)
    run.settle(GRACE_S, network)
    recovered_s = time.monotonic() - healed_at
    row = run.check()
    assert row["submitted"] == 18 and max(run.submit_s) >= 5.0  # some submits did wait out the partition
    network.check_alive()
    assert pids(network) == miner  # the ledger and the miner carried on: no restart
    print(f"\npartition 10 s: {row}, longest submit {max(run.submit_s):.1f}s, all terminal {recovered_s:.1f}s "
          "after the heal")


def test_clients_reset_while_the_broker_holds_their_old_connections(network: EmbeddedNetwork, client: Client,
                                                                    miner: dict[str, int], healed: TcpProxy) -> None:
    """A NAT forgets every connection: the processes get a reset while RabbitMQ keeps the old connections, and
    their exclusive queues (the ledger's remote-control mailbox), until its heartbeat timeout. The old code's
    ledger and miner exited on RESOURCE_LOCKED."""
    run = Run(client)
    for seed in range(5):
        run.submit(seed)
    run.settle(GRACE_S, network)  # the ledger and the miner are connected and consuming before the fault
    healed.forget()
    forgotten_at = time.monotonic()
    assert healed.forgotten > 0  # RabbitMQ still holds them: the reconnects meet their locked queues
    for seed in range(5, 15):
        run.submit(seed)
    recovered_s = run.settle(GRACE_S, network)
    row = run.check()
    assert row["completed"] == 15
    network.check_alive()
    assert pids(network) == miner
    ledger_log = (network.logs / "ledger.log").read_text()
    assert "still held by its previous broker connection" in ledger_log  # the fault did happen, and was survived
    print(f"\nclients reset: {row}, all terminal {time.monotonic() - forgotten_at:.1f}s after the reset "
          f"({recovered_s:.1f}s of waiting)")
