"""Forged jobs are refused (issue 12, attack 4). With only its own broker user, an attacker published jobs into a
tier queue and the honest miner obeyed: it rendered 512² on tiny-sd (catalog maximum 256), generated 1,050 tokens
on smollm2-135m (maximum 512), PUT its output to the attacker's HTTP server, and answered a victim's job id with
the attacker's prompt, which the ledger credited and the victim downloaded.

Now a miner runs only a ``SignedJob`` whose EIP-712 signature recovers to the network's dispatch address, within
its deadline, its model's limits and the configured store (``workers.miner.admission``). Each attack is made two
ways: a job the attacker writes and signs with its own key, and a genuine signed job it read from a queue and
changed. The broker now refuses a miner's publish into a tier queue (``heurist.access.permissions``), and each
test checks that first; the message is then put there with the trusted side's user, standing in for a broker that
lets it through (the embedded broker has no users), so that the miner's own checks are tested too. Each
test asserts the refusal (the miner's log names it), that nothing ran (no upload, no request to the attacker's
server), that the victim's job then completes with the victim's own output, that the next honest job completes,
and that nothing is credited to the attacker.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from PIL import Image

from heurist.access import BrokerAccess
from heurist.client import Client
from heurist.embedded import EmbeddedNetwork, wait_until
from heurist.jobs import ImageParams, JobState, SignedJob, TextParams
from heurist.signing import sign_job
from tests.adversary.raw import Attacker, Trap, http_trap, recorded_job, smuggle

# Each module starts its own network (about 1-4 min here): run by `make test-slow`, and so by CI.
pytestmark = pytest.mark.slow

IMAGE, TEXT = "tiny-sd", "smollm2-135m"


@pytest.fixture(scope="module")
def network_settings() -> dict[str, Any]:
    return {"audit_base_rate": 0.0, "audit_new_miner_rate": 0.0, "audit_suspicious_rate": 0.0}


@pytest.fixture(scope="module")
def honest(network: EmbeddedNetwork, client: Client, access: BrokerAccess) -> str:
    wallet = network.start_miner([IMAGE, TEXT], name="honest",
                                 broker_url=lambda address: access.add_miner(address).broker_url)
    wait_until(lambda: client.ledger.is_registered(wallet.address), 300, "the honest miner to register",
               check=network.check_alive)
    return wallet.address


@pytest.fixture
def trap() -> Iterator[Trap]:
    with http_trap() as server:
        yield server


def altered(signed: SignedJob, **changes: Any) -> dict[str, Any]:
    """A genuine signed job with fields changed and the dispatcher's signature kept."""
    return {"job": signed.job.model_copy(update=changes).model_dump(mode="json"), "signature": signed.signature}


def forged(attacker: Attacker, signed: SignedJob, **changes: Any) -> dict[str, Any]:
    """A job the attacker writes and signs with its own key."""
    return sign_job(attacker.wallet, signed.job.model_copy(update=changes)).model_dump(mode="json")


def assert_refused(network: EmbeddedNetwork, task_id: str, reason: str) -> None:
    line = f"refused job message {task_id}: {reason}"
    wait_until(lambda: line in (network.logs / "honest.log").read_text(), 60, f"the miner to log {line!r}",
               check=network.check_alive)


def assert_nothing_for_the_attacker(client: Client, attacker: Attacker, honest: str) -> None:
    assert not client.ledger.is_registered(attacker.wallet.address)
    earners = {m.address for m in client.ledger.miner_points()}
    assert attacker.wallet.address not in earners and earners <= {honest}


def assert_next_honest_job_completes(client: Client, honest: str) -> None:
    after = client.submit_image("a harbour", model=IMAGE, steps=4, seed=int(time.time()) % 1000).result(timeout=120)
    assert after.state is JobState.COMPLETED and after.miner == honest


def finish_genuine(client: Client, attacker: Attacker, signed: SignedJob, key: str, honest: str) -> bytes:
    """Nothing was uploaded for the victim; then its genuine message runs and is credited to the honest miner."""
    assert client.store.stat(key) is None, "the refused message was run: its output was uploaded"
    spec = client.catalog[signed.job.model_id]
    client._send(signed, spec.queue)
    [view] = client.wait_all([signed.job.job_id], timeout=180)
    assert view.state is JobState.COMPLETED and view.miner == honest
    assert client.ledger.points_entries(signed.job.job_id) == 1
    result = client.to_result(view)
    return client.fetch_output(result)


@pytest.mark.parametrize("how", ["forged", "altered"])
def test_a_512px_image_on_a_256_max_model_is_refused(network: EmbeddedNetwork, client: Client, honest: str,
                                                     attacker: Attacker, trap: Trap, how: str) -> None:
    params = ImageParams(prompt="a lighthouse", width=64, height=64, steps=4, guidance=7.5, seed=7)
    signed, key = recorded_job(client, IMAGE, params)
    big = params.model_copy(update={"width": 512, "height": 512})
    if how == "forged":
        payload = forged(attacker, signed, params=big, output_url=f"{trap.url}/big.png")
    else:
        payload = altered(signed, params=big)
    smuggle(client, attacker, client.catalog[IMAGE].queue, payload, signed.job.job_id)
    assert_refused(network, signed.job.job_id, "bad_signature")
    png = finish_genuine(client, attacker, signed, key, honest)
    assert Image.open(io.BytesIO(png)).size == (64, 64)  # the victim's own size, not the attacker's
    assert trap.hits == []
    assert_next_honest_job_completes(client, honest)
    assert_nothing_for_the_attacker(client, attacker, honest)


@pytest.mark.parametrize("how", ["forged", "altered"])
def test_a_1050_token_text_job_is_refused(network: EmbeddedNetwork, client: Client, honest: str,
                                          attacker: Attacker, trap: Trap, how: str) -> None:
    params = TextParams(prompt="Name a color.", max_tokens=4)
    signed, key = recorded_job(client, TEXT, params)
    long = params.model_copy(update={"max_tokens": 1050})
    if how == "forged":
        payload = forged(attacker, signed, params=long, output_url=f"{trap.url}/long.json")
    else:
        payload = altered(signed, params=long)
    smuggle(client, attacker, client.catalog[TEXT].queue, payload, signed.job.job_id)
    assert_refused(network, signed.job.job_id, "bad_signature")
    answer = json.loads(finish_genuine(client, attacker, signed, key, honest))
    assert 1 <= answer["output_tokens"] <= 4  # the victim's own limit
    assert trap.hits == []
    assert_next_honest_job_completes(client, honest)
    assert_nothing_for_the_attacker(client, attacker, honest)


@pytest.mark.parametrize("how", ["forged", "altered"])
def test_an_upload_url_on_the_attackers_server_is_refused(network: EmbeddedNetwork, client: Client, honest: str,
                                                          attacker: Attacker, trap: Trap, how: str) -> None:
    params = ImageParams(prompt="a red fox", width=64, height=64, steps=4, guidance=7.5, seed=8)
    signed, key = recorded_job(client, IMAGE, params)
    url = f"{trap.url}/steal?X-Amz-Signature=x"
    payload = forged(attacker, signed, output_url=url) if how == "forged" else altered(signed, output_url=url)
    smuggle(client, attacker, client.catalog[IMAGE].queue, payload, signed.job.job_id)
    assert_refused(network, signed.job.job_id, "bad_signature")
    finish_genuine(client, attacker, signed, key, honest)
    assert trap.hits == [], "the miner sent a request to the attacker's server"
    assert_next_honest_job_completes(client, honest)
    assert_nothing_for_the_attacker(client, attacker, honest)


def test_a_victims_job_id_with_the_attackers_prompt_is_refused(network: EmbeddedNetwork, client: Client,
                                                               honest: str, attacker: Attacker) -> None:
    victim = ImageParams(prompt="a lighthouse at dawn", width=64, height=64, steps=4, guidance=7.5, seed=9)
    theirs = victim.model_copy(update={"prompt": "the attacker's advert"})
    signed, key = recorded_job(client, IMAGE, victim)
    smuggle(client, attacker, client.catalog[IMAGE].queue, altered(signed, params=theirs), signed.job.job_id)
    assert_refused(network, signed.job.job_id, "bad_signature")
    smuggle(client, attacker, client.catalog[IMAGE].queue, forged(attacker, signed, params=theirs), signed.job.job_id)
    wait_until(lambda: (network.logs / "honest.log").read_text().count(
        f"refused job message {signed.job.job_id}: bad_signature") == 2, 60, "the second refusal")
    got = finish_genuine(client, attacker, signed, key, honest)
    # The same seed, size and steps with each prompt, run honestly: the victim got its own prompt's image.
    own, advert = (client.fetch_output(client.submit_image(p.prompt, model=IMAGE, width=64, height=64, steps=4,
                                                           guidance=7.5, seed=9).result(timeout=120))
                   for p in (victim, theirs))
    assert got == own and got != advert
    assert_nothing_for_the_attacker(client, attacker, honest)


def test_a_genuine_message_replayed_after_its_deadline_is_refused(network: EmbeddedNetwork, client: Client,
                                                                  honest: str, attacker: Attacker) -> None:
    """The attacker took a genuine job off the queue, held it past its deadline and put it back unchanged."""
    params = ImageParams(prompt="a quiet harbour", width=64, height=64, steps=4, guidance=7.5, seed=10)
    signed, key = recorded_job(client, IMAGE, params, deadline_s=2.5)  # its upload URL needs 1 s at least
    time.sleep(3.0)
    smuggle(client, attacker, client.catalog[IMAGE].queue, signed.model_dump(mode="json"), signed.job.job_id)
    assert_refused(network, signed.job.job_id, "expired")
    assert client.store.stat(key) is None  # not run
    view = client.ledger.job(signed.job.job_id)
    assert view is not None and view.state is JobState.QUEUED  # left to the sweep: failed and refunded there
    assert client.ledger.points_entries(signed.job.job_id) == 0
    assert_next_honest_job_completes(client, honest)
    assert_nothing_for_the_attacker(client, attacker, honest)
