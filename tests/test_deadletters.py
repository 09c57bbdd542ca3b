"""The dead-letter queue on both brokers: kept poison is listed without being consumed, capped at 4 KB a
message, and purged on request; and on the embedded SQLite broker a real ledger keeps poison there and goes
on registering honest miners (the RabbitMQ side, as a miner attacks it, is tests/adversary/test_poison.py)."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection, Exchange, Producer, Queue

from heurist import broker
from heurist.celery_app import create_app
from heurist.client import Client
from heurist.deadletters import (
    EXCERPT_BYTES,
    Poison,
    Reason,
    dead_letter_queue,
    declare_dead_letters,
    has_fanout,
    keep,
)
from heurist.deadletters.listing import peek, purge
from heurist.embedded import EmbeddedNetwork, heurist_cmd, wait_until
from heurist.identity import Wallet
from heurist.jobs import MinerHello
from heurist.settings import Settings
from heurist.signing import sign_message
from heurist.storage.seaweed import SeaweedServer
from tasks.names import REGISTER_MINER


@pytest.fixture(params=["embedded", "rabbitmq"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    url = (f"embedded+sqlite:///{tmp_path / 'broker.sqlite'}" if request.param == "embedded"
           else request.getfixturevalue("rabbit_url"))
    return Settings(_env_file=None, broker_url=url, data_dir=tmp_path)  # type: ignore[call-arg]


def test_kept_poison_is_listed_without_being_consumed_then_purged(settings: Settings) -> None:
    app = create_app(settings)
    assert peek(settings).total == 0  # nothing kept yet, nothing declared: an empty listing
    big = b"{" + b"x" * 100_000
    assert keep(app, Poison(Reason.OVERSIZED, "100001 bytes, above the limit", "inbox.miner-0xabc", "miner-0xabc",
                            big, task="heurist.ledger.record_completion", dead_at=1_700_000_000.0))
    assert keep(app, Poison(Reason.UNKNOWN_TASK, "task 'celery.group'", "ledger", None, b"[[], {}]"))
    wait_until(lambda: peek(settings).total == 2, 10, "both to be kept")
    first = peek(settings, 10)
    assert first == peek(settings, 10)  # a listing changes nothing
    assert first.total == 2 and [letter.reason for letter in first.letters] == ["oversized", "unknown-task"]
    oversized = first.letters[0]
    assert (oversized.source, oversized.sender, oversized.size) == ("inbox.miner-0xabc", "miner-0xabc", 100_001)
    assert oversized.time == "2023-11-14T22:13:20+00:00" and oversized.task == "heurist.ledger.record_completion"
    assert first.letters[1].sender == "" and first.letters[1].time  # no user_id: unknown sender; now
    assert len(peek(settings, 1).letters) == 1
    with Connection(settings.resolved_broker_url()) as conn:  # the kept body is capped
        queue = dead_letter_queue(has_fanout(conn))(conn.default_channel)
        queue.declare()
        message = queue.get(no_ack=False)
        assert len(message.body) == EXCERPT_BYTES and message.headers["size"] == len(big)
        message.requeue()
    assert purge(settings) == 2
    assert peek(settings).total == 0
    app.close()


def test_what_the_broker_dead_letters_itself_is_listed_too(rabbit_url: str, tmp_path: Path) -> None:
    """A consumer that rejects without requeue, on a queue whose dead-letter exchange is ``heurist.dead`` (the
    policy ``heurist broker setup`` sets): RabbitMQ's ``x-death`` header gives the reason and the queue."""
    settings = Settings(_env_file=None, broker_url=rabbit_url, data_dir=tmp_path)  # type: ignore[call-arg]
    with Connection(rabbit_url) as conn:
        declare_dead_letters(conn)
        channel = conn.channel()
        source = Queue("inbox.miner-0xabc", Exchange("inbox.miner-0xabc", "direct"), routing_key="inbox.miner-0xabc",
                       queue_arguments={"x-dead-letter-exchange": "heurist.dead"})(channel)
        source.declare()
        Producer(channel).publish({"x": 1}, exchange="inbox.miner-0xabc", routing_key="inbox.miner-0xabc",
                                  user_id="guest", serializer="json")
        wait_until(lambda: (message := source.get(no_ack=False)) is not None and message.reject() is None, 10,
                   "the message to be rejected")
    wait_until(lambda: peek(settings).total == 1, 10, "the broker to dead-letter it")
    letter = peek(settings).letters[0]
    assert (letter.reason, letter.source, letter.sender) == ("broker-rejected", "inbox.miner-0xabc", "guest")
    assert letter.time and letter.excerpt == '{"x": 1}'


@pytest.fixture(scope="module")
def embedded(seaweed: SeaweedServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNetwork]:
    """The embedded network's ledger on the SQLite broker and SQLite ledger, with no miner."""
    base = Settings(_env_file=None, s3_endpoint=seaweed.endpoint, s3_access_key=seaweed.access_key,  # type: ignore[call-arg]
                    s3_secret_key=seaweed.secret_key, s3_bucket=f"dead-{uuid.uuid4().hex[:8]}")
    with EmbeddedNetwork(tmp_path_factory.mktemp("embedded"), base=base) as net:
        yield net


def _task(name: str, *args: Any) -> tuple[dict[str, Any], bytes]:
    task_id = str(uuid.uuid4())
    headers = {"lang": "py", "task": name, "id": task_id, "root_id": task_id, "parent_id": None, "group": None,
               "retries": 0, "eta": None, "expires": None, "timelimit": [None, None], "ignore_result": True}
    return headers, json.dumps([list(args), {}, {}]).encode()


def _hello(wallet: Wallet, device_name: str) -> dict[str, Any]:
    """A signed hello as a miner builds it (EIP-712); a device name over the field limit is built by hand (the
    model would refuse it), with a signature that never gets checked: the ledger refuses it before."""
    hello = {"miner": wallet.address, "operator": None, "models": ["tiny-sd"], "queues": ["vram8.tiny-sd"],
             "device": {"kind": "cpu", "name": device_name, "vram_gb": 8.0, "torch_threads": 1},
             "started_at": time.time()}
    if len(device_name) > 256:
        return {"hello": hello, "signature": "0x" + "00" * 65}
    return {"hello": hello, "signature": sign_message(wallet, MinerHello.model_validate(hello))}


def test_the_embedded_ledger_keeps_poison_and_goes_on(embedded: EmbeddedNetwork) -> None:
    settings = embedded.settings()
    honest, attacker = Wallet.create(), Wallet.create()
    bulky_headers, small_body = _task(REGISTER_MINER, _hello(attacker, "CPU"))
    poison = [_task(REGISTER_MINER, _hello(attacker, "G" * 2**20)), _task("celery.group", []),
              _task(REGISTER_MINER, _hello(attacker, "G" * 1000)), ({}, b"\x00\x01 not json"),
              ({**bulky_headers, "argsrepr": "A" * 100_000}, small_body)]
    broker.register()
    with Client(settings) as client, Connection(settings.resolved_broker_url()) as conn:
        wait_until(lambda: (embedded.logs / "ledger.log").exists(), 30, "the ledger to start",
                   check=embedded.check_alive)
        producer = Producer(conn.channel())
        for headers, body in [*poison, _task(REGISTER_MINER, _hello(honest, "CPU"))]:  # honest one last
            producer.publish(body, exchange="", routing_key=settings.ledger_queue, headers=headers,
                             content_type="application/json", content_encoding="utf-8")
        wait_until(lambda: client.ledger.is_registered(honest.address), 60, "the honest hello to register",
                   check=embedded.check_alive)
        wait_until(lambda: peek(settings).total >= len(poison), 30, "the poison to be kept",
                   check=embedded.check_alive)
        assert not client.ledger.is_registered(attacker.address)
    found = peek(settings)
    assert sorted(letter.reason for letter in found.letters) == ["malformed", "oversized", "oversized",
                                                                  "undecodable", "unknown-task"]
    assert any("bytes of headers" in letter.detail for letter in found.letters)  # not only the body counts
    assert {letter.source for letter in found.letters} == {settings.ledger_queue}
    assert {letter.sender for letter in found.letters} == {""}  # the SQLite broker has no users
    done = subprocess.run(heurist_cmd("broker", "dead-letters"), env={**embedded.trusted_env(), "COLUMNS": "250"},
                          capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    for expected in ("oversized", "malformed", "unknown-task", "undecodable", "hello.device.name", "celery.group"):
        assert expected in done.stdout, done.stdout
    embedded.check_alive()
    assert not embedded.restarts, f"restarted: {dict(embedded.restarts)}"  # the ledger never died
