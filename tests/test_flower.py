"""`heurist flower` on a live network: a miner on its own restricted broker user shows up by name from the
ledger's verified heartbeats (miners send no events and answer no remote control: both need shared exchanges a
miner could delete or spoof), and the dashboard never answers without the password."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from heurist.access import broker_access
from heurist.access.backends.rabbitmq import RabbitMQAccess
from heurist.embedded import EmbeddedNetwork, wait_until
from heurist.errors import ConfigError
from heurist.identity import Wallet
from heurist.processes import tail
from heurist.settings import Settings

PASSWORD = "flower-test-secret"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(**heurist: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HEURIST_")}
    return {**clean, **{f"HEURIST_{k.upper()}": v for k, v in heurist.items()}}


@pytest.fixture(scope="module")
def network_settings() -> dict[str, Any]:
    """Heartbeats every 2 s: Flower shows a miner alive from its first (at the default 30 s, this module waited
    about 30 s for it)."""
    return {"heartbeat_interval_s": 2.0}


@pytest.fixture(scope="module")
def restricted_miner(network: EmbeddedNetwork) -> Iterator[Wallet]:
    """A tiny-sd miner connected as its own broker user (`heurist broker add-miner`), deleted afterwards."""
    access = broker_access(network.settings())
    assert isinstance(access, RabbitMQAccess)
    users: list[str] = []

    def own_url(address: str) -> str:
        creds = access.add_miner(address)
        users.append(creds.user)
        return creds.broker_url

    yield network.start_miner(["tiny-sd"], name="restricted", broker_url=own_url)
    network.kill("restricted")
    for user in users:  # broker users outlive the test's vhost
        access.api.call("DELETE", f"/users/{user}", allow_missing=True)


@pytest.fixture(scope="module")
def flower_url(network: EmbeddedNetwork, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`heurist flower` as a subprocess on a free port, settings from HEURIST_* variables only."""
    port = _free_port()
    log = tmp_path_factory.mktemp("flower") / "flower.log"
    env = _env(broker_url=network.settings().resolved_broker_url(), flower_password=PASSWORD)
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "heurist.cli.main", "flower", "--port", str(port)],
                                env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        assert proc.poll() is None, f"flower exited with {proc.returncode}:\n{tail(log)}"
        try:
            return requests.get(f"{url}/healthcheck", timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    try:
        wait_until(answers, 60, "Flower to answer")
        yield url
    finally:
        proc.terminate()
        assert proc.wait(15) == 0, tail(log)  # SIGTERM ends it cleanly (docker stop does the same)


def test_flower_lists_a_restricted_miner_and_its_queue(network: EmbeddedNetwork, restricted_miner: Wallet,
                                                       flower_url: str) -> None:
    auth = ("admin", PASSWORD)
    assert requests.get(f"{flower_url}/api/workers", timeout=10).status_code == 401
    assert requests.get(f"{flower_url}/api/workers", auth=("admin", "wrong"), timeout=10).status_code == 401
    name = f"miner-{restricted_miner.address.lower()}@ledger"  # heurist.ledger.miner_events

    def alive() -> bool:
        status = requests.get(f"{flower_url}/api/workers", params={"status": 1}, auth=auth, timeout=10).json()
        return bool(status.get(name))

    wait_until(alive, 90, f"Flower to show {name} alive", check=network.check_alive, interval=1)
    workers = requests.get(f"{flower_url}/api/workers", params={"refresh": 1}, auth=auth, timeout=20).json()
    assert not any(w.startswith(f"miner-{restricted_miner.address.lower()}") for w in workers)  # no inspect replies
    # Flower learns queue names from workers' `inspect active_queues`, which miners no longer answer: tier queue
    # lengths and consumers come from the exporter (heurist_queue_messages, tests/test_exporter.py).


def test_flower_refuses_to_start_without_a_password(tmp_path: Path) -> None:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "heurist.cli.main", "flower"], capture_output=True, text=True,
                          env=_env(broker_url="amqp://guest:guest@127.0.0.1:5672//"), cwd=tmp_path, timeout=60)
    assert done.returncode == 2
    assert "HEURIST_FLOWER_PASSWORD" in done.stderr and "Traceback" not in done.stderr
    assert time.monotonic() - started < 30


def test_flower_needs_rabbitmq_not_the_embedded_broker(tmp_path: Path) -> None:
    from heurist.cli.flower import flower_options, management_api

    embedded = Settings(_env_file=None, data_dir=tmp_path, flower_password="x")  # type: ignore[call-arg]
    with pytest.raises(ConfigError, match="HEURIST_BROKER_URL"):
        flower_options(embedded, 5555, "127.0.0.1")
    rabbit = embedded.model_copy(update={"broker_url": "amqp://ops:pw@broker:5672/heurist"})
    assert flower_options(rabbit, 5555, "")["broker_api"] == "http://ops:pw@broker:15672/api/"
    assert management_api("https://a:b@mq.example/api") == "https://a:b@mq.example/api/"
