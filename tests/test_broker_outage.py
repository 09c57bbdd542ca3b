"""Nothing is lost when the broker is gone for minutes (issue 14, item 3): a 150 s outage and a 60 s partition.

The old ledger and miner gave up after ~111 s without a broker (``broker_connection_max_retries = 10``) and
never came back; behind a partition their half-open connections lived on for minutes (120 s heartbeats).
Every process reaches RabbitMQ through a ``TcpProxy``; the machine's RabbitMQ is never touched.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from heurist.client import Client
from heurist.embedded import EmbeddedNetwork
from heurist.jobs import JobState
from heurist.storage.seaweed import SeaweedServer
from tests.fixtures.broker_faults import Run, fast_image, pids, proxied_network, start_proxied_miner
from tests.fixtures.proxy import TcpProxy

pytestmark = pytest.mark.slow

GRACE_S = 240.0  # far inside a tiny-sd job's deadline (600 s and more)


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
    start_proxied_miner(network, client, proxy)
    return pids(network)


@pytest.fixture
def healed(proxy: TcpProxy) -> Iterator[TcpProxy]:
    try:
        yield proxy
    finally:
        proxy.heal()


def _first_job_after(client: Client, seed: int) -> float:
    """Seconds until a job submitted now is completed: how long the network took to serve again."""
    started = time.monotonic()
    result = client.submit(fast_image("after the fault", seed)).result(timeout=GRACE_S)
    assert result.state is JobState.COMPLETED and client.ledger.points_entries(result.job_id) == 1
    return time.monotonic() - started


def test_broker_unreachable_for_150_s(network: EmbeddedNetwork, client: Client, miner: dict[str, int],
                                      healed: TcpProxy) -> None:
    run = Run(client)
    for seed in range(6):  # some of these are in the miner or on their way to the ledger when it goes
        run.submit(seed)
    healed.down()
    down_at = time.monotonic()
    for seed in range(6, 9):  # refused, after the bounded retries, and recorded failed
        run.submit(seed)
    assert len(run.refused) == 3 and max(run.submit_s) < 45.0  # HEURIST_BROKER_PUBLISH_TIMEOUT_S, 30 s
    time.sleep(max(0.0, 150.0 - (time.monotonic() - down_at)))
    healed.up()
    up_at = time.monotonic()
    recovered_s = _first_job_after(client, 100)
    for seed in range(9, 15):
        run.submit(seed)
    run.settle(GRACE_S, network)
    row = run.check()
    assert not [at for at in run.refused_started if at > up_at]
    network.check_alive()
    assert pids(network) == miner  # the ledger and the miner waited it out: no restart
    print(f"\nbroker down 150 s: {row}, a new job completed {recovered_s:.1f}s after the broker was back")


def test_partition_of_60_s(network: EmbeddedNetwork, client: Client, miner: dict[str, int],
                           healed: TcpProxy) -> None:
    """The partition ends without resets: the workers' own heartbeats must have given up the dead connections."""
    run, stop = Run(client), threading.Event()
    submitters = run.submit_while(stop, threads=3, every_s=2.0, limit=40)
    time.sleep(3.0)
    healed.partition()
    time.sleep(60.0)
    healed.heal(reset=False)
    healed_at = time.monotonic()
    recovered_s = _first_job_after(client, 200)
    time.sleep(5.0)
    stop.set()
    for submitter in submitters:
        submitter.join(timeout=60)
    run.settle(GRACE_S, network)
    row = run.check()
    assert not [at for at in run.refused_started if at > healed_at]  # once healed, every submit goes through
    network.check_alive()
    assert pids(network) == miner
    print(f"\npartition 60 s: {row}, longest submit {max(run.submit_s):.1f}s, a new job completed "
          f"{recovered_s:.1f}s after the heal ({time.monotonic() - healed_at:.0f}s to settle everything)")
