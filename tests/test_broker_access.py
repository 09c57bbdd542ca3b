"""Per-miner broker users on a real RabbitMQ: what a miner's user may do, a real miner working with one, and
a revoke that cuts a miner off the broker while its unfinished job goes to an honest miner."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from amqp.exceptions import AccessRefused, NotAllowed
from kombu import Connection, Exchange, Producer, Queue

from heurist.access import BrokerAccess, MinerCredentials, broker_access, miner_user
from heurist.access.backend import inbox_exchange, inbox_name
from heurist.access.backends.embedded import EmbeddedAccess
from heurist.access.backends.rabbitmq import RabbitMQAccess
from heurist.access.permissions import miner_permissions
from heurist.access.topology import setup_broker
from heurist.catalog import load_catalog
from heurist.client import Client
from heurist.dispatch import dispatch_signer
from heurist.embedded import EmbeddedNetwork, wait_until
from heurist.errors import ConfigError, HeuristError
from heurist.identity import Wallet
from heurist.jobs import JobState
from heurist.ledger.audit_service import AuditLedger
from heurist.processes import tail
from heurist.settings import Settings

TIER_QUEUE = "vram8.tiny-sd"


@pytest.fixture(scope="module")
def access(rabbit_url: str) -> Iterator[RabbitMQAccess]:
    """The vhost's broker access; broker users outlive vhosts, so the miners added here are deleted after."""
    settings = Settings(_env_file=None, broker_url=rabbit_url)  # type: ignore[call-arg]
    backend = broker_access(settings)
    assert isinstance(backend, RabbitMQAccess)
    yield backend
    for account in backend.list_miners():
        if account.address.lower() in ADDED:
            backend.api.call("DELETE", f"/users/{account.user}", allow_missing=True)


ADDED: set[str] = set()


def _add(access: BrokerAccess, address: str) -> MinerCredentials:
    ADDED.add(address.lower())
    return access.add_miner(address)


@pytest.fixture
def creds(access: RabbitMQAccess) -> MinerCredentials:
    return _add(access, Wallet.create().address)


@pytest.fixture
def admin(rabbit_url: str) -> Iterator[Connection]:
    with Connection(rabbit_url) as conn:
        yield conn


def _refused(conn: Connection, operation: Callable[[Any], object]) -> None:
    """``operation`` on a fresh channel of ``conn`` is refused by the broker (the channel dies, not ``conn``)."""
    channel = conn.channel()
    with pytest.raises(AccessRefused):
        operation(channel)
        channel.basic_qos(0, 1, False)  # a publish is refused asynchronously: a synchronous call surfaces it


def test_permissions_configure_nothing_read_tiers_write_only_the_own_inbox_and_streams() -> None:
    user = miner_user("0x" + "ab" * 20)
    perms = miner_permissions(user, inbox_exchange(user), ("ledger", "audit.x"))
    shared = ["vram8.tiny-sd", "ledger", "celeryev", "celery.pidbox", "reply.celery.pidbox", "heurist.stream",
              inbox_name(user), "amq.default", f"{user}-vram8@host.celery.pidbox", "dead-letters"]
    assert not any(re.match(perms.configure, name) for name in shared)  # miners declare nothing
    for name in ["vram8.tiny-sd", "vram24.mixtral-8x7b"]:
        assert re.match(perms.read, name), name
    for name in ["ledger", "audit.tiny-sd", "celeryev", "unrouted", "amq.default", "vram7.x", "xvram8.x",
                 inbox_name(user), "heurist.stream", "dead-letters", "private.vram8.x"]:
        assert not re.match(perms.read, name), name  # private queues: only for miners approved for privacy
    approved = miner_permissions(user, inbox_exchange(user), ("ledger", "audit.x"), private=True)
    assert re.match(approved.read, "private.vram8.x") and re.match(approved.read, "vram8.x")
    assert not re.match(approved.read, "private.ledger") and approved.write == perms.write
    assert re.match(perms.write, inbox_exchange(user)) and re.match(perms.write, "heurist.stream")
    assert not re.match(perms.write, inbox_name(user))  # its inbox queue: a write right there allows binding it
    for name in ["ledger", "amq.default", "audit.tiny-sd", "celery.pidbox", "celeryev", "reply.celery.pidbox",
                 "vram8.tiny-sd", inbox_name(miner_user("0x" + "cd" * 20)), "heurist.streamx", "heurist.dead"]:
        assert not re.match(perms.write, name), name
    limited = miner_permissions(user, inbox_exchange(user), ("ledger",), max_vram_gb=12)
    assert re.match(limited.read, "vram12.x") and not re.match(limited.read, "vram24.x")
    limited = miner_permissions(user, inbox_exchange(user), ("ledger",), max_vram_gb=12, private=True)
    assert re.match(limited.read, "private.vram12.x") and not re.match(limited.read, "private.vram24.x")
    with pytest.raises(ConfigError, match="no VRAM class fits"):
        miner_permissions(user, inbox_exchange(user), ("ledger",), max_vram_gb=4)
    with pytest.raises(ConfigError, match="looks like a miner's tier queue"):
        miner_permissions(user, inbox_exchange(user), ("vram8.ledger",))
    with pytest.raises(ConfigError, match="looks like a miner's tier queue"):  # whether or not it may read private
        miner_permissions(user, inbox_exchange(user), ("private.vram8.ledger",))


def test_admin_url_defaults_to_the_broker_host_and_credentials() -> None:
    settings = Settings(_env_file=None, broker_url="amqp://ops:s%40cret@rabbit.example:5672/heurist")  # type: ignore[call-arg]
    assert settings.resolved_broker_admin_url() == "http://ops:s%40cret@rabbit.example:15672"
    assert Settings(_env_file=None).resolved_broker_admin_url() is None  # type: ignore[call-arg]


def test_miner_user_consumes_its_tier_and_writes_its_inbox_but_reads_no_trusted_queue(
        creds: MinerCredentials, admin: Connection, rabbit_url: str) -> None:
    assert creds.user == miner_user(creds.address) and creds.password not in repr(creds)
    setup_broker(Settings(_env_file=None, broker_url=rabbit_url), load_catalog(None))  # type: ignore[call-arg]
    stream = Queue("heurist.stream.job", Exchange("heurist.stream", "direct", durable=True), "job")
    stream(admin.default_channel).declare()
    Producer(admin.default_channel).publish({"job": 1}, exchange=TIER_QUEUE, routing_key=TIER_QUEUE)
    inbox = inbox_name(creds.user)
    with Connection(creds.broker_url) as miner:
        job = miner.SimpleQueue(Queue(TIER_QUEUE, no_declare=True)).get(timeout=5)
        assert job.payload == {"job": 1}
        job.ack()
        Producer(miner.channel()).publish({"completion": 1}, exchange=inbox_exchange(creds.user), routing_key=inbox,
                                          user_id=creds.user)
        Producer(miner.channel()).publish({"token": 1}, exchange="heurist.stream", routing_key="job")
        _refused(miner, lambda ch: ch.basic_consume("heurist.stream.job", callback=print))
        _refused(miner, lambda ch: ch.basic_consume(inbox, callback=print))  # nor read what it sent
        _refused(miner, lambda ch: ch.basic_consume("ledger", callback=print))
        _refused(miner, lambda ch: ch.queue_delete("ledger"))
        _refused(miner, lambda ch: Producer(ch).publish({}, exchange="ledger", routing_key="ledger"))
        _refused(miner, lambda ch: Producer(ch).publish({}, exchange="", routing_key="audit.tiny-sd"))
        _refused(miner, lambda ch: Producer(ch).publish({"method": "shutdown"}, exchange="celery.pidbox"))
    sent = admin.SimpleQueue(Queue(inbox, no_declare=True)).get(timeout=5)
    assert sent.payload == {"completion": 1} and sent.properties["user_id"] == creds.user
    sent.ack()
    token = admin.SimpleQueue(Queue("heurist.stream.job", no_declare=True)).get(timeout=5)
    assert token.payload == {"token": 1}
    token.ack()


def test_revoked_user_cannot_connect_until_restored(access: RabbitMQAccess, creds: MinerCredentials) -> None:
    access.revoke(creds.address)
    with pytest.raises(HeuristError, match="restore"):
        access.add_miner(creds.address)  # re-adding must not undo a ban
    with pytest.raises(NotAllowed, match="access to vhost"), Connection(creds.broker_url) as conn:
        conn.connect()
    assert {a.address.lower(): a.active for a in access.list_miners()}[creds.address] is False
    access.restore(creds.address)
    with Connection(creds.broker_url) as conn:
        conn.connect()


def test_embedded_revoke_warns_and_does_not_raise(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    backend = broker_access(Settings(_env_file=None, data_dir=tmp_path))  # type: ignore[call-arg]
    assert isinstance(backend, EmbeddedAccess)
    address = Wallet.create().address
    assert backend.add_miner(address).broker_url.startswith("embedded+sqlite://")
    with caplog.at_level(logging.WARNING, logger="heurist.access"):
        backend.revoke(address)
    assert "no per-user permissions" in caplog.text and "ledger's ban" in caplog.text
    assert [(a.address, a.active) for a in backend.list_miners()] == [(address.lower(), False)]
    backend.restore(address)
    assert backend.list_miners()[0].active


def test_cli_refuses_a_bad_address_and_manages_embedded_miners(tmp_path: Path) -> None:
    def heurist(*args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HEURIST_")}
        return subprocess.run([sys.executable, "-m", "heurist.cli.main", "broker", *args], capture_output=True,
                              text=True, timeout=60, env={**env, "HEURIST_DATA_DIR": str(tmp_path), "COLUMNS": "200"})

    bad = heurist("add-miner", "0x123")
    assert bad.returncode == 2 and "expected 0x followed by 40 hex digits" in bad.stderr
    assert "Traceback" not in bad.stderr
    address = Wallet.create().address
    added = heurist("add-miner", address, "--json")
    joining = json.loads(added.stdout.splitlines()[-1])
    assert joining["broker_url"].startswith("embedded+sqlite://")
    assert joining["dispatch_address"] == dispatch_signer(Settings(_env_file=None, data_dir=tmp_path)).address  # type: ignore[call-arg]
    assert heurist("revoke", address).returncode == 0
    listed = json.loads(heurist("miners", "--json").stdout.splitlines()[-1])
    assert [(m["address"], m["active"]) for m in listed] == [(address.lower(), False)]


# --- a live network: real `heurist` miners, each with its own broker user -------------------------------


@pytest.fixture(scope="module")
def network_settings() -> dict[str, Any]:
    """Every job audited (the slow ban test starts an auditor; without one the samples just wait)."""
    return {"audit_base_rate": 1.0, "audit_new_miner_rate": 1.0, "audit_seed": 7}


def _alive(network: EmbeddedNetwork, *names: str) -> Callable[[], None]:
    """Raise if one of ``names`` died (a revoked miner may exit on its own: not an error here)."""
    def check() -> None:
        for name in names:
            if network.procs[name].poll() is not None:
                raise HeuristError(f"{name} exited:\n{tail(network.logs / f'{name}.log')}")
    return check


def _start(network: EmbeddedNetwork, client: Client, access: BrokerAccess, name: str,
           cheat: str | None = None) -> str:
    wallet = network.start_miner(["tiny-sd"], name=name, cheat=cheat,
                                 broker_url=lambda address: _add(access, address).broker_url)
    wait_until(lambda: client.ledger.is_registered(wallet.address), 120, f"miner {name} to register",
               check=_alive(network, "ledger", name))
    return wallet.address


def _ready(client: Client, queue: str) -> int:
    """Messages ready in ``queue`` (one a miner holds unacked is not counted)."""
    with client.app.connection_for_write() as conn:
        return int(conn.default_channel.queue_declare(queue, passive=True).message_count)


def _connections(access: RabbitMQAccess, address: str) -> int:
    return len(access.api.get(f"/connections/username/{miner_user(address)}") or [])


@pytest.fixture(scope="module")
def live_access(network: EmbeddedNetwork, access: RabbitMQAccess) -> RabbitMQAccess:
    """The trusted side's broker access on the network (``access`` deletes the users added here)."""
    backend = broker_access(network.settings())
    assert isinstance(backend, RabbitMQAccess)
    return backend


@pytest.fixture(scope="module")
def own_miner(network: EmbeddedNetwork, client: Client, live_access: RabbitMQAccess) -> str:
    return _start(network, client, live_access, "own")


def test_miner_with_its_own_broker_user_completes_a_job(client: Client, live_access: RabbitMQAccess,
                                                        own_miner: str) -> None:
    result = client.submit_image("a lighthouse", model="tiny-sd", steps=8, seed=1).result(timeout=120)
    assert result.state is JobState.COMPLETED and result.miner == own_miner
    assert _connections(live_access, own_miner), "the miner is not connected with its own user"


def test_revoke_closes_the_connection_and_redelivers_its_job_to_an_honest_miner(
        network: EmbeddedNetwork, client: Client, live_access: RabbitMQAccess, own_miner: str) -> None:
    slow = client.submit_image("a slow job", model="tiny-sd", width=256, height=256, steps=10, seed=2)
    wait_until(lambda: _ready(client, TIER_QUEUE) == 0, 60, "the miner to take the slow job")
    started = time.monotonic()
    live_access.revoke(own_miner)  # returns once the broker lists none of the miner's connections
    revoked_s = time.monotonic() - started
    wait_until(lambda: _ready(client, TIER_QUEUE) == 1, 30, "the unacked job to be requeued", interval=0.01)
    requeued_s = time.monotonic() - started
    after = client.submit_image("a job after the revoke", model="tiny-sd", steps=8, seed=3)
    honest = _start(network, client, live_access, "honest")
    results = [slow.result(timeout=120), after.result(timeout=120)]
    print(f"\nrevoke (permissions + connections closed): {revoked_s:.3f}s; job requeued after {requeued_s:.3f}s; "
          f"both jobs done by the honest miner {time.monotonic() - started:.1f}s after the revoke")
    assert [(r.state, r.miner) for r in results] == [(JobState.COMPLETED, honest)] * 2
    assert all(client.ledger.points_entries(h.id) == 1 for h in (slow, after))
    assert _connections(live_access, own_miner) == 0
    network.kill("own")  # it retries its connection forever, refused each time


@pytest.mark.slow
def test_an_audit_ban_cuts_the_cheater_off_the_broker(network: EmbeddedNetwork, client: Client,
                                                      live_access: RabbitMQAccess) -> None:
    honest = _start(network, client, live_access, "honest-b")
    cheater = _start(network, client, live_access, "cheater", cheat="random-image")
    network.start_auditor(["tiny-sd"])
    audits = AuditLedger(client.ledger.engine)
    handles = [client.submit_image("a harbour", model="tiny-sd", steps=8, seed=s) for s in range(10, 20)]
    wait_until(lambda: audits.is_banned(cheater), 300, "the cheater to be banned",
               check=_alive(network, "ledger", "auditor", "honest-b"))
    banned = time.monotonic()
    wait_until(lambda: _connections(live_access, cheater) == 0, 30, "the cheater's connections to close",
               interval=0.02)
    print(f"\nban seen -> cheater's connections closed: {time.monotonic() - banned:.2f}s")
    assert {a.address.lower(): a.active for a in live_access.list_miners()}[cheater.lower()] is False
    results = [h.result(timeout=300) for h in handles]
    assert all(r.miner == cheater for r in results if r.state is not JobState.COMPLETED)
    later = [client.submit_image("after the ban", model="tiny-sd", steps=8, seed=s) for s in range(30, 34)]
    assert all(r.state is JobState.COMPLETED and r.miner != cheater for r in (h.result(timeout=120) for h in later))
    assert audits.standing(honest).failed == 0
    assert _connections(live_access, cheater) == 0
    network.kill("cheater")
