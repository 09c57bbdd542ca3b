"""Issue 12, attack 5: a miner copies a job's presigned PUT URL from its tier queue and overwrites the output
once the job is credited. The attack used to make clients download the attacker's bytes, and it framed the
honest miner, who failed its audit ("stored output changed after it was credited") and was banned.
Also here: the deadline half of attack 7. A completion that reaches the ledger after the deadline (the
ledger was stopped, as a flood would delay it) is judged by when the store got the output.

What refuses the attack (``heurist.storage.freeze``, ``heurist.dispatch``): the ledger copies exactly the
bytes it verified to ``frozen/<sha256>/<key>``, for which no URL is ever made, and clients and the auditor
read that copy. The URL still writes the mutable key until the job's deadline, and the store refuses it
after that (403).

The attacker has only its own restricted broker user (``heurist broker add-miner``) and raw kombu: it reads
the job message with ``basic_get`` and puts it back (``requeue``), so the honest miner still runs it.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import requests
from kombu import Connection, Queue
from sqlalchemy import select

from heurist.access import BrokerAccess
from heurist.audit.middleware import audit_queue
from heurist.catalog import load_catalog
from heurist.catalog.loader import read_catalog_text
from heurist.client import Client, JobHandle
from heurist.db.engine import session_scope
from heurist.embedded import EmbeddedNetwork, wait_until
from heurist.identity import Wallet
from heurist.jobs import JobState
from heurist.ledger import tables
from heurist.ledger.audit_service import AuditLedger
from heurist.storage.presigned import upload_headers
from tasks.names import AUDIT_JOB

# Each module starts its own network (about 1-4 min here): run by `make test-slow`, and so by CI.
pytestmark = pytest.mark.slow

MODEL = "tiny-sd"
DEADLINE_S = 45.0  # tiny-sd's deadline in this module's catalog (shipped: 600 s), so tests can outwait it
EVIL = b"\x89PNG\r\n\x1a\n" + b"not what the honest miner rendered" * 30


@pytest.fixture(scope="module")
def network_settings(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A catalog whose tiny-sd deadline is short, and no sampled audits: the test asks for the one it wants. The
    honest miner runs one job at a time, so the victim's job waits in the tier queue where the attacker can read it
    (a batching miner prefetches up to its batch size, out of any other user's reach)."""
    text, _ = read_catalog_text(None)  # the shipped catalog
    section = text.index(f"[models.{MODEL}]")
    start = text.index("deadline = ", section)
    end = text.index("\n", start)
    catalog = tmp_path_factory.mktemp("catalog") / "models.toml"
    catalog.write_text(text[:start] + f"deadline = {{ base_s = {DEADLINE_S}, per_unit_s = 0.0 }}" + text[end:])
    assert load_catalog(catalog)[MODEL].deadline.base_s == DEADLINE_S
    return {"catalog_path": catalog, "audit_base_rate": 0.0, "audit_new_miner_rate": 0.0,
            "audit_suspicious_rate": 0.0, "miner_max_batch": 1}


# ------------------------------------------------------------------------------------------- the attacker


def find_output_url(value: Any) -> str | None:
    """The ``output_url`` anywhere in a decoded message body, also inside JSON carried as a string (the
    job message may travel wrapped in a signed envelope)."""
    if isinstance(value, dict):
        if isinstance(value.get("output_url"), str):
            return str(value["output_url"])
        value = list(value.values())
    if isinstance(value, list | tuple):
        for item in value:
            found = find_output_url(item)
            if found:
                return found
    if isinstance(value, str | bytes) and value[:1] in ("{", "[", b"{", b"["):
        try:
            return find_output_url(json.loads(value))
        except ValueError:
            return None
    return None


def steal_url(broker_url: str, queue: str, job_id: str, timeout: float) -> str:
    """Read job messages off the tier queue with basic_get until the victim's shows up; put every one back."""
    give_up = time.monotonic() + timeout
    with Connection(broker_url) as conn:
        q = Queue(queue, no_declare=True).bind(conn.channel())
        while time.monotonic() < give_up:
            message = q.get(no_ack=False)
            if message is None:
                time.sleep(0.005)
                continue
            body = json.loads(message.body)
            url = find_output_url(body)
            message.requeue()  # the honest miner still gets it
            if url is not None and job_id in url:
                return url
    raise AssertionError(f"the victim's job {job_id} never sat in {queue} for the attacker to read")


def overwrite(url: str, data: bytes) -> int:
    """PUT other bytes through the copied URL, with exactly the headers it signed; the HTTP status."""
    return requests.put(url, data=data, headers=upload_headers(url, data, "image/png"), timeout=30).status_code


def submit_victim(client: Client, attacker_url: str) -> tuple[JobHandle, str]:
    """An honest miner busy with a longer job, so the victim's job waits in the queue long enough to be read."""
    for attempt in range(3):
        client.submit_image("a slow blocker", model=MODEL, steps=50, seed=100 + attempt)
        victim = client.submit_image("a lighthouse at dawn", model=MODEL, steps=8, seed=7 + attempt)
        try:
            return victim, steal_url(attacker_url, client.catalog[MODEL].queue, victim.id, timeout=10)
        except AssertionError:
            continue
    raise AssertionError("the attacker never read a victim job off the queue")


def _audit_consumers(client: Client, queue: str) -> int:
    with client.app.connection_for_write() as conn:
        try:
            return int(conn.channel().queue_declare(queue, passive=True).consumer_count)
        except Exception:
            return 0


# ------------------------------------------------------------------------------------------------ tests


def test_overwrite_after_credit_changes_nothing(network: EmbeddedNetwork, client: Client, access: BrokerAccess,
                                                honest: str) -> None:
    attacker = access.add_miner(Wallet.create().address)
    victim, url = submit_victim(client, attacker.broker_url)
    result = victim.result(timeout=DEADLINE_S + 60)
    assert result.state is JobState.COMPLETED and result.miner == honest
    original = client.fetch_output(result)
    assert result.frozen_key is not None and result.frozen_key.startswith("frozen/")

    assert overwrite(url, EVIL) == 200, "the URL should still write the mutable key before the deadline"
    assert client.store.get(result.output_key) == EVIL  # the attack lands, but only in the mutable key
    assert victim.download() == original and original != EVIL  # the victim gets its own answer
    again = client.to_result(client.ledger.job(victim.id))  # type: ignore[arg-type]
    assert (again.state, again.miner, again.points) == (JobState.COMPLETED, honest, result.points)
    assert again.url is not None and requests.get(again.url, timeout=30).content == original
    assert client.ledger.points_entries(victim.id) == 1

    # An audit of the job compares the frozen bytes: the honest miner passes and is not banned.
    queue = audit_queue(client.settings.audit_queue_prefix, MODEL)
    network.start_auditor([MODEL])
    wait_until(lambda: _audit_consumers(client, queue) > 0, 300, "the auditor to consume", check=network.check_alive)
    client.app.send_task(AUDIT_JOB, args=[victim.id], queue=queue)
    audits = AuditLedger(client.ledger.engine)
    wait_until(lambda: audits.standing(honest).audited > 0, 300, "the audit", check=network.check_alive)
    assert (audits.standing(honest).passed, audits.standing(honest).failed) == (1, 0)
    assert not audits.is_banned(honest)

    # After the deadline the store refuses the URL itself.
    deadline = client.ledger.job(victim.id).deadline_at  # type: ignore[union-attr]
    time.sleep(max(0.0, deadline + 1.5 - time.time()))
    assert overwrite(url, EVIL + b"again") == 403
    assert victim.download() == original

    after = client.submit_image("a harbour", model=MODEL, steps=8, seed=42).result(timeout=DEADLINE_S + 60)
    assert after.state is JobState.COMPLETED and after.miner == honest  # the network keeps working
    assert not client.ledger.is_registered(attacker.address)
    assert attacker.address not in {m.address for m in client.ledger.miner_points()}


def test_a_completion_the_ledger_reads_after_the_deadline_is_judged_by_the_upload_time(
        network: EmbeddedNetwork, client: Client, honest: str) -> None:
    """The ledger is down while an honest job is done (as a flood would delay it): it reads the completion
    after the deadline, but the store got the output in time, so the job is COMPLETED with its points."""
    network.kill("ledger")
    try:
        job = client.submit_image("a windmill", model=MODEL, steps=8, seed=9)
        view = client.ledger.job(job.id)
        assert view is not None
        wait_until(lambda: client.store.stat(job.output_key) is not None, DEADLINE_S, "the honest upload",
                   check=network.check_alive)
        time.sleep(max(0.0, view.deadline_at + 1.5 - time.time()))
        assert client.ledger.job(job.id).state is JobState.QUEUED  # type: ignore[union-attr]  # nobody judged it yet
    finally:
        network.start_ledger()
    result = job.result(timeout=120)
    assert (result.state, result.miner) == (JobState.COMPLETED, honest)
    final = client.ledger.job(job.id)
    assert final is not None and final.points_micro > 0 and final.error is None
    with session_scope(client.ledger.engine) as session:
        uploaded_at, received_at = session.execute(
            select(tables.CompletionRow.uploaded_at, tables.CompletionRow.received_at)
            .where(tables.CompletionRow.job_id == job.id)).one()
    assert uploaded_at is not None and uploaded_at <= final.deadline_at < received_at
    assert client.fetch_output(result) == client.store.get(final.stored_key)


def test_find_output_url_searches_envelopes() -> None:
    """The attacker's search works whatever wraps the job message."""
    url = "http://s3/outputs/x.png?X-Amz-Signature=abc"
    assert find_output_url([[{"job_id": "x", "output_url": url}], {}, {}]) == url
    assert find_output_url([[{"envelope": json.dumps({"message": {"output_url": url}})}], {}]) == url
    assert find_output_url({"nothing": [1, "two"]}) is None
