"""A miner publishes poison into the ledger's inbox: a completion with a 10 KB field, a hello with a 20 KB
device name, the 8 MB hello of attack 7, a task name the ledger does not run, a body that is not JSON and a
pickled one. Before, the ledger logged each and dropped it (or stored 8 MB in ``miners``); now each is
refused and kept in ``dead-letters`` once, with its reason and the broker-validated sender, the ledger keeps
crediting honest work, and nothing of the attacker's is stored.

A heartbeat whose ``sent_at`` is NaN (issue 13: it once counted 8 uptime slots) is malformed too: no message
field accepts NaN or infinity (``heurist.jobs.Frozen``).

The attack uses only what a miner has: its own broker user from ``heurist broker add-miner`` (permitted to
publish into the ``ledger`` exchange, as its completions do) and raw kombu.
"""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import time
from typing import Any

import pytest
from amqp.exceptions import AccessRefused, MessageNacked, PreconditionFailed
from kombu import Connection, Producer
from sqlalchemy import text

from heurist.access import BrokerAccess
from heurist.access.backend import inbox_exchange, inbox_name
from heurist.client import Client
from heurist.deadletters import DEAD_QUEUE
from heurist.deadletters.listing import peek
from heurist.embedded import EmbeddedNetwork, heurist_cmd, wait_until
from heurist.identity import Wallet
from heurist.jobs import JobState
from tasks.names import RECORD_COMPLETION, RECORD_HEARTBEAT, REGISTER_MINER
from tests.adversary.conftest import publish_to_inbox, task_body, task_headers
from tests.fixtures.broker import ready

EIGHT_MB = 8 * 2**20  # above the inbox's byte bound (4 MiB): the broker refuses it
OVERSIZED = 200_000  # below the inbox's bound, above the ledger's max_message_bytes (64 KiB)


def _device(name: str) -> dict[str, Any]:
    return {"kind": "cpu", "name": name, "vram_gb": 8.0, "torch_threads": 1}


def _completion(attacker: Wallet, job_id: str, content_type: str) -> dict[str, Any]:
    claim = {"job_id": job_id, "model_id": "tiny-sd", "miner": attacker.address,
             "output_sha256": hashlib.sha256(b"forged").hexdigest(), "output_bytes": 6, "content_type": content_type,
             "input_tokens": 0, "output_tokens": 0, "timings": {"run_s": 1.0, "upload_s": 0.1, "total_s": 1.1},
             "device": _device("GPU"), "weights_sha256": "0" * 64, "finished_at": time.time()}
    payload = json.dumps(claim, sort_keys=True, separators=(",", ":")).encode()
    return {"completion": claim, "signature": attacker.sign(payload)}


def _hello(attacker: Wallet, device_name: str) -> dict[str, Any]:
    hello = {"miner": attacker.address, "models": ["tiny-sd"], "queues": ["vram8.tiny-sd"],
             "device": _device(device_name), "started_at": time.time()}
    payload = json.dumps(hello, sort_keys=True, separators=(",", ":")).encode()
    return {"hello": hello, "signature": attacker.sign(payload)}


def _heartbeat(attacker: Wallet, sent_at: float) -> dict[str, Any]:
    """Issue 13, finding 4: ``sent_at=NaN`` compared false with every window bound and counted 8 slots."""
    beat = {"miner": attacker.address, "sent_at": sent_at}
    payload = json.dumps(beat, sort_keys=True, separators=(",", ":")).encode()
    return {"heartbeat": beat, "signature": attacker.sign(payload)}


def _poison(attacker: Wallet, victim_job: str) -> list[tuple[str, str, dict[str, Any], bytes]]:
    """(expected reason, content type, headers, body) of each poison message."""
    pickled = b"\x80\x04\x95\x0b\x00\x00\x00\x00\x00\x00\x00\x8c\x07os.exit\x94."
    return [
        ("malformed", "application/json", task_headers(RECORD_COMPLETION),
         task_body(_completion(attacker, victim_job, "image/png" + " " * 10_000))),
        ("malformed", "application/json", task_headers(REGISTER_MINER), task_body(_hello(attacker, "G" * 20_000))),
        ("malformed", "application/json", task_headers(RECORD_HEARTBEAT), task_body(_heartbeat(attacker, math.nan))),
        ("oversized", "application/json", task_headers(REGISTER_MINER), task_body(_hello(attacker, "G" * OVERSIZED))),
        ("unknown-task", "application/json", task_headers("heurist.ledger.credit_everyone"), task_body(victim_job)),
        ("undecodable", "application/json", task_headers(RECORD_COMPLETION), b"\xff\xfe{not json at all"),
        ("undecodable", "application/x-python-serialize", task_headers(RECORD_COMPLETION), pickled),
    ]


def test_poison_is_kept_with_its_reason_and_the_ledger_keeps_crediting(network: EmbeddedNetwork, client: Client,
                                                                       access: BrokerAccess, honest: str) -> None:
    victim = client.submit_image("a lighthouse", model="tiny-sd", steps=8, seed=1).result(timeout=120)
    assert victim.state is JobState.COMPLETED and victim.miner == honest
    attacker_key = Wallet.create()
    attacker = access.add_miner(attacker_key.address)
    messages = _poison(attacker_key, victim.job_id)
    started = time.monotonic()
    publish_to_inbox(attacker, [(headers, body, kind) for _, kind, headers, body in messages], confirm=False)

    settings = network.settings()
    wait_until(lambda: peek(settings, 50).total >= len(messages), 60, "every poison message to be kept",
               check=network.check_alive)
    kept_s = time.monotonic() - started
    after = client.submit_image("a harbour", model="tiny-sd", steps=8, seed=2).result(timeout=120)
    assert after.state is JobState.COMPLETED and after.miner == honest  # the ledger keeps working
    network.check_alive()  # and never crash-looped
    assert not network.restarts, f"restarted: {dict(network.restarts)}"  # nor crashed once

    found = peek(settings, 50)
    assert found.total == len(messages), "poison was requeued or kept twice"  # never retried
    assert sorted(letter.reason for letter in found.letters) == sorted(reason for reason, *_ in messages)
    assert {letter.source for letter in found.letters} == {inbox_name(attacker.user)}
    assert {letter.sender for letter in found.letters} == {attacker.user}  # RabbitMQ-validated
    by_reason = {letter.reason: letter for letter in found.letters}
    assert by_reason["oversized"].size > OVERSIZED and "above the limit of 65536" in by_reason["oversized"].detail
    assert "heurist.ledger.credit_everyone" in by_reason["unknown-task"].detail
    details = sorted(letter.detail for letter in found.letters if letter.reason == "malformed")
    assert details[0].startswith("completion.content_type: String should have at most 64 characters"), details
    assert details[1].startswith("heartbeat.sent_at: Input should be a finite number"), details
    assert details[2].startswith("hello.device.name: String should have at most 256 characters"), details
    assert ready(client, inbox_name(attacker.user)) == 0  # nothing left behind to be redelivered
    assert peek(settings, 50).total == len(messages)  # listing consumed nothing

    # Nothing of the attacker's is stored or credited, and the victim keeps its own answer.
    assert not client.ledger.is_registered(attacker_key.address)
    assert attacker_key.address not in {m.address for m in client.ledger.miner_points()}
    with client.ledger.engine.connect() as db:
        stored = db.execute(text("SELECT coalesce(sum(length(detail)), 0) FROM rejections")).scalar_one()
        miners = db.execute(text("SELECT count(*) FROM miners")).scalar_one()
    assert stored < 4096 and miners == 1, (stored, miners)
    assert client.ledger.rejections(victim.job_id) == []
    assert client.ledger.points_entries(victim.job_id) == 1
    again = client.ledger.job(victim.job_id)
    assert again is not None and again.state is JobState.COMPLETED and again.miner == honest
    assert again.output_sha256 == victim.output_sha256
    assert hashlib.sha256(client.fetch_output(victim)).hexdigest() == victim.output_sha256
    print(f"\n{len(messages)} poison messages kept in {kept_s:.2f}s")


def test_the_cli_lists_them_without_consuming_and_purges(network: EmbeddedNetwork, client: Client,
                                                         honest: str) -> None:
    def cli(*args: str) -> Any:
        done = subprocess.run(heurist_cmd("broker", "dead-letters", *args), env=network.trusted_env(),
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.strip().splitlines()[-1])

    listed = cli("--json", "--limit", "3")
    assert listed["total"] >= 6 and len(listed["dead_letters"]) == 3
    first = listed["dead_letters"][0]
    assert set(first) >= {"reason", "detail", "source", "sender", "time", "size"}
    assert cli("--json")["total"] == listed["total"]  # still there
    assert cli("--purge", "--yes", "--json") == {"purged": listed["total"]}
    assert cli("--json") == {"total": 0, "dead_letters": []}


def test_a_miner_can_neither_read_nor_write_the_dead_letters(access: BrokerAccess) -> None:
    creds = access.add_miner(Wallet.create().address)
    with Connection(creds.broker_url) as conn, pytest.raises(AccessRefused):
        conn.channel().basic_get(DEAD_QUEUE)
    confirmed = {"confirm_publish": True}  # wait for the broker's answer to each publish
    with Connection(creds.broker_url, transport_options=confirmed) as conn, pytest.raises(AccessRefused):
        Producer(conn.channel()).publish(b"x", exchange="heurist.dead", routing_key=DEAD_QUEUE, retry=False)
    inbox = inbox_name(creds.user)
    with Connection(creds.broker_url, transport_options=confirmed) as conn, pytest.raises(MessageNacked):
        Producer(conn.channel()).publish(b"G" * EIGHT_MB, exchange=inbox_exchange(creds.user), routing_key=inbox,
                                         retry=False)
    with Connection(creds.broker_url, transport_options=confirmed) as conn, pytest.raises(AccessRefused):
        Producer(conn.channel()).publish(b"x", exchange="ledger", routing_key="ledger", retry=False)
    with Connection(creds.broker_url, transport_options=confirmed) as conn, pytest.raises(PreconditionFailed):
        Producer(conn.channel()).publish(b"x", exchange=inbox_exchange(creds.user), routing_key=inbox,  # nor pose
                                         user_id="miner-0x" + "0" * 40, retry=False)  # miner: user_id is checked
