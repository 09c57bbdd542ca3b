"""A miner purges the tier queue that holds a victim's job (issue 12, attack 2): the job is lost from the broker.

RabbitMQ's read right, which a miner needs to consume its tier's queue, also allows ``queue.purge``, and the
broker cannot grant one without the other, so the purge itself succeeds. What refuses the attack is the
ledger's stranded-job sweep (``heurist.ledger.sweep``): the job, still QUEUED ``sweep_grace_s`` past its
deadline, is re-sent with a fresh deadline and completed by the honest miner; once its re-send budget is
spent it ends FAILED with the reason, and its credit reservation is refunded.

The attack uses only what a miner has: its own broker user from ``heurist broker add-miner`` and raw kombu.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from kombu import Connection
from sqlalchemy import select

from heurist.access import BrokerAccess
from heurist.catalog import ModelSpec, load_catalog
from heurist.catalog.schema import Deadline
from heurist.client import Client
from heurist.credits.ledger import CreditLedger
from heurist.credits.reconcile import reconcile
from heurist.db.engine import session_scope
from heurist.embedded import EmbeddedNetwork, wait_until
from heurist.identity import Wallet
from heurist.jobs import JobState
from heurist.ledger.sweep import never_completed
from heurist.ledger.tables import JobResend
from heurist.submission import image_params, text_params
from tests.fixtures.broker import ready

# Each module starts its own network (about 1-4 min here): run by `make test-slow`, and so by CI.
pytestmark = pytest.mark.slow

GRACE_S, INTERVAL_S = 2.0, 1.0
VICTIM_DEADLINE_S = 45.0  # long enough for the honest miner, started after the purge, to be up at the re-send
TINY_QUEUE, TEXT_QUEUE = "vram8.tiny-sd", "vram8.smollm2-135m"


@pytest.fixture(scope="module")
def network_settings() -> dict[str, Any]:
    """A fast sweep and one re-send; no audits (nothing here is about them)."""
    return {"sweep_grace_s": GRACE_S, "sweep_interval_s": INTERVAL_S, "job_resends": 1,
            "audit_base_rate": 0.0, "audit_new_miner_rate": 0.0, "audit_suspicious_rate": 0.0}


def _purge(broker_url: str, queue: str) -> int:
    """The attack: purge ``queue`` as a miner, raw kombu on its own broker user, declaring nothing."""
    with Connection(broker_url) as conn:
        return int(conn.default_channel.queue_purge(queue) or 0)


def _resends(client: Client, job_id: str) -> list[JobResend]:
    with session_scope(client.ledger.engine) as session:
        return list(session.scalars(select(JobResend).where(JobResend.job_id == job_id).order_by(JobResend.attempt)))


def _resent_after(row: JobResend) -> float:
    """How long past its deadline the sweep re-sent the job: grace + up to one interval, by design."""
    return row.sent_at - row.previous_deadline_at


def _short(model: str, deadline_s: float) -> ModelSpec:
    """The catalog's spec with a short deadline, so the test need not wait out the catalog's (600 s for
    tiny-sd). ``Client.submit_params`` records and sends jobs with it exactly as any submission."""
    return load_catalog()[model].model_copy(update={"deadline": Deadline(base_s=deadline_s, per_unit_s=0.0)})


def _assert_nothing_for(client: Client, attacker: str) -> None:
    assert not client.ledger.is_registered(attacker)
    assert attacker not in {m.address for m in client.ledger.miner_points()}


def test_a_purged_job_is_resent_and_completed_by_the_honest_miner(network: EmbeddedNetwork, client: Client,
                                                                 access: BrokerAccess,
                                                                 request: pytest.FixtureRequest) -> None:
    submitted, spec = time.time(), _short("tiny-sd", VICTIM_DEADLINE_S)
    victim = client.submit_params(spec, image_params(spec, "a lighthouse at dawn", steps=8, seed=11))
    wait_until(lambda: ready(client, TINY_QUEUE) == 1, 30, "the victim's job in its queue")
    attacker = access.add_miner(Wallet.create().address)
    assert _purge(attacker.broker_url, TINY_QUEUE) == 1  # the broker allows it: read right = purge right
    assert ready(client, TINY_QUEUE) == 0
    view = client.ledger.job(victim.id)
    assert view is not None and view.state is JobState.QUEUED and view.resends == 0
    first_deadline = view.deadline_at
    honest = request.getfixturevalue("honest")  # the only miner starts now: the job is gone from the broker

    result = victim.result(timeout=VICTIM_DEADLINE_S * 2 + 60)
    assert result.state is JobState.COMPLETED and result.miner == honest, result.error
    [row] = _resends(client, victim.id)
    delay = _resent_after(row)
    print(f"\npurged job re-sent {delay:.2f}s after its deadline (grace {GRACE_S}s, interval {INTERVAL_S}s; "
          f"deadline was {first_deadline - submitted:.1f}s after submission); completed "
          f"{time.time() - row.sent_at:.2f}s after the re-send")
    assert GRACE_S <= delay <= GRACE_S + INTERVAL_S + 1.0
    assert row.previous_deadline_at == pytest.approx(first_deadline)
    assert row.deadline_at - row.sent_at == pytest.approx(first_deadline - view.created_at)  # same allowance
    view = client.ledger.job(victim.id)
    assert view is not None and view.resends == 1 and view.points_micro > 0  # on time by its fresh deadline

    image = client.fetch_output(result)  # the victim's own answer: the bytes the ledger verified
    assert image.startswith(b"\x89PNG") and client.ledger.points_entries(victim.id) == 1
    after = client.submit_image("a harbour at night", model="tiny-sd", steps=8, seed=12).result(timeout=120)
    assert after.state is JobState.COMPLETED and after.miner == honest  # the network keeps working
    assert client.ledger.job(after.job_id).resends == 0  # type: ignore[union-attr]
    _assert_nothing_for(client, attacker.address)


def test_a_job_purged_past_its_budget_fails_with_the_reason_and_is_refunded(
        network: EmbeddedNetwork, client: Client, access: BrokerAccess, honest: str) -> None:
    """A text job nobody here serves, purged each time it is sent: re-sent once, then failed and refunded."""
    credits = CreditLedger(client.ledger.engine)
    key_id, _ = credits.create_key("victim app", initial_units=10.0)
    catalog, spec, job_id = load_catalog(), _short("smollm2-135m", 3.0), str(uuid.uuid4())
    credits.reserve(key_id, job_id, 1.5)  # as the gateway does, before the job is sent
    client.submit_params(spec, text_params(spec, "Name three colors.", max_tokens=8), job_id=job_id)
    attacker = access.add_miner(Wallet.create().address)
    purged = 0

    def purge_and_check() -> bool:
        nonlocal purged
        purged += _purge(attacker.broker_url, TEXT_QUEUE)
        view = client.ledger.job(job_id)
        return view is not None and view.state.terminal

    wait_until(purge_and_check, 60, "the stranded job to fail", check=network.check_alive, interval=0.2)
    assert purged == 2  # the first send and the one re-send
    view = client.ledger.job(job_id)
    assert view is not None and view.state is JobState.FAILED and view.resends == 1
    assert view.error == never_completed(1) == "never completed: lost, purged or never taken; re-sent 1 time"
    [row] = _resends(client, job_id)
    failed_after = (view.finished_at or 0) - row.deadline_at
    print(f"\nre-sent {_resent_after(row):.2f}s after its deadline; failed {failed_after:.2f}s after the "
          f"re-send's deadline")
    assert GRACE_S <= _resent_after(row) <= GRACE_S + INTERVAL_S + 1.0
    assert GRACE_S <= failed_after <= GRACE_S + INTERVAL_S + 1.0
    assert credits.balance(key_id) == pytest.approx(8.5)
    # The gateway's reconcile loop refunds failed jobs; run its one step here, as the gateway would.
    done = reconcile(credits, client.ledger, catalog, grace_s=0.0)
    assert job_id in done.refunded
    assert credits.balance(key_id) == pytest.approx(10.0) == credits.entries_total(key_id)
    assert reconcile(credits, client.ledger, catalog, grace_s=0.0).refunded == []  # once
    assert client.ledger.points_entries(job_id) == 0
    _assert_nothing_for(client, attacker.address)
    after = client.submit_image("a quiet harbour", model="tiny-sd", steps=8, seed=13).result(timeout=120)
    assert after.state is JobState.COMPLETED and after.miner == honest
