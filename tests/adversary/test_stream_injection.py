"""A miner writes into a victim's streamed answer (issue 12, attack 8): "…is Berlin. Send your API key to
https://evil.example/verify" while the verified answer was the honest miner's.

The attacker has only a restricted miner user (``heurist broker add-miner``), which may write to ``heurist.stream``
and read its tier's queue, and raw kombu. While the honest miner is busy with another job, the victim's job waits
in the tier queue; the attacker reads it with ``basic_get`` and requeues it, so it learns the job id and the
stream key. Then:

* chunks without a MAC, or MACed under a key of its own, are dropped: the victim sees only the honest answer;
* keyed chunks sent after the honest miner's first token are dropped too: the stream is locked to the honest
  miner's broker user;
* keyed chunks sent before the honest miner starts win the lock and are shown as previews (what a same-tier miner
  can still do, ``heurist.stream_auth``), but the stream ends in a ``stream_mismatch`` error event naming the
  attacker's broker user, never in a final event;
* a keyed ``done`` with no text that races ahead (to blank or break every stream of its tier) gains nothing: what
  was shown is a prefix of the verified answer, so the gateway sends the rest from the verified answer and ends
  normally, logging the attacker's user as not the completing miner's.

Each test then checks that the verified answer is the honest miner's, that the next streamed job works, and
that nothing is credited to the attacker.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import pytest
import requests
from kombu import Connection, Producer

from heurist.access import BrokerAccess
from heurist.access.backend import MinerCredentials, miner_user
from heurist.client import Client
from heurist.credits.ledger import CreditLedger
from heurist.embedded import EmbeddedNetwork, wait_until
from heurist.gateway.app import create_app
from heurist.identity import Wallet
from heurist.jobs import JobState, TextOutput
from heurist.stream_auth import new_stream_key, sealed
from heurist.streams import STREAM_EXCHANGE, TokenStream
from heurist.submission import text_params
from tests.fixtures.gateway import serving

# Each module starts its own network (about 1-4 min here): run by `make test-slow`, and so by CI.
pytestmark = pytest.mark.slow

MODEL = "smollm2-135m"
INJECTED = ["…is Berlin.", " Send your API key to", " https://evil.example/verify"]
EVIL = "evil.example"


@pytest.fixture(scope="module")
def network_settings() -> dict[str, Any]:
    """The honest miner runs one job at a time, so the victim's job waits in the tier queue where the attacker reads
    it (a batching miner prefetches up to its batch size, out of any other user's reach)."""
    return {"miner_max_batch": 1}


@pytest.fixture(scope="module")
def honest_models() -> list[str]:
    return [MODEL]


@pytest.fixture(scope="module")
def attacker(access: BrokerAccess) -> MinerCredentials:
    return access.add_miner(Wallet.create().address)


@pytest.fixture(scope="module")
def base_url(network: EmbeddedNetwork, client: Client, honest: str) -> Iterator[str]:
    app = create_app(network.settings().model_copy(update={"gateway_rate_per_minute": 1000}), client,
                     CreditLedger(client.ledger.engine))
    with serving(app) as url:
        yield url


@pytest.fixture(scope="module")
def api_key(client: Client) -> str:
    return CreditLedger(client.ledger.engine).create_key("stream-victim", 50.0)[1]


class Victim:
    """A streaming chat request to the gateway, read event by event in a thread."""

    def __init__(self, base_url: str, api_key: str, prompt: str) -> None:
        self.events: list[dict[str, Any]] = []
        self._pool = ThreadPoolExecutor(1)
        self.done: Future[None] = self._pool.submit(self._read, base_url, api_key, prompt)

    def _read(self, base_url: str, api_key: str, prompt: str) -> None:
        body = {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "max_tokens": 16,
                "stream": True}
        with requests.post(f"{base_url}/chat/completions", json=body, stream=True, timeout=300,
                           headers={"Authorization": f"Bearer {api_key}"}) as response:
            response.raise_for_status()
            for line in response.iter_lines(decode_unicode=True):
                if line and line.startswith("data: ") and line != "data: [DONE]":
                    self.events.append(json.loads(line.removeprefix("data: ")))

    def finish(self) -> Victim:
        self.done.result(timeout=300)
        self._pool.shutdown()
        return self

    @property
    def shown(self) -> str:
        return "".join(e["choices"][0]["delta"].get("content") or "" for e in self.events if e.get("choices"))

    @property
    def finish_reasons(self) -> list[str]:
        return [e["choices"][0]["finish_reason"] for e in self.events
                if e.get("choices") and e["choices"][0]["finish_reason"]]

    @property
    def errors(self) -> list[dict[str, Any]]:
        return [e["error"] for e in self.events if "error" in e]

    @property
    def job_id(self) -> str:
        return str(self.events[0].get("id", "")).removeprefix("chatcmpl-")


@contextmanager
def busy_miner(network: EmbeddedNetwork, client: Client) -> Iterator[None]:
    """Hold the honest miner (prefetch 1) on a long streamed job, so the next job waits in the tier queue."""
    spec = client.catalog[MODEL]
    job_id = str(uuid.uuid4())
    with TokenStream(network.settings().resolved_broker_url(), job_id, chunk_timeout_s=120) as tokens:
        client.submit_params(spec, text_params(spec, "Tell a long story about the sea.", max_tokens=160),
                             job_id=job_id, stream_key=tokens.key)
        next(iter(tokens))  # the miner is generating it now
        yield
    client.wait_all([job_id], 300)


def steal_job(attacker: MinerCredentials, queue: str, timeout_s: float = 60.0) -> dict[str, Any]:
    """The attack's first step: read a streamed job from the tier queue (basic_get) and put it back."""
    give_up = time.monotonic() + timeout_s
    with Connection(attacker.broker_url) as conn:
        channel = conn.channel()
        while time.monotonic() < give_up:
            message = channel.basic_get(queue, no_ack=False)
            if message is None:
                time.sleep(0.02)
                continue
            channel.basic_reject(message.delivery_tag, requeue=True)
            # Celery protocol 2: [args, kwargs, embed]; the one argument is a SignedJob
            job: dict[str, Any] = json.loads(message.body)[0][0]["job"]
            if job.get("stream"):
                return job
    raise AssertionError(f"no streamed job appeared in {queue} within {timeout_s:g}s")


def inject(attacker: MinerCredentials, job_id: str, key: str | None) -> None:
    """Publish the injected answer into ``job_id``'s stream as the attacker's broker user: MACed with ``key``,
    or unkeyed (no MAC, then a MAC under a key of its own) when ``key`` is None."""
    with Connection(attacker.broker_url) as conn:
        producer = Producer(conn.channel())

        def send(body: dict[str, Any]) -> None:
            producer.publish(body, exchange=STREAM_EXCHANGE, routing_key=job_id, serializer="json",
                             user_id=attacker.user, retry=False)

        pieces = [{"job_id": job_id, "index": i, "text": t} for i, t in enumerate(INJECTED)]
        done = {"job_id": job_id, "index": len(INJECTED), "text": "", "done": True, "finish_reason": "stop"}
        if key is None:
            for fields in [*pieces, done]:
                send(fields)
            own = new_stream_key()
            for fields in [*pieces, done]:
                send(sealed(own, **fields).model_dump(mode="json"))
        else:
            for fields in [*pieces, done]:
                send(sealed(key, **fields).model_dump(mode="json"))


def verified_text(client: Client, job_id: str, honest: str) -> str:
    """The stored, verified answer; it must be the honest miner's."""
    [view] = client.wait_all([job_id], 300)
    assert view.state is JobState.COMPLETED and view.miner == honest
    text = TextOutput.model_validate_json(client.fetch_output(client.to_result(view))).text
    assert text and EVIL not in text
    return text


def honest_network_still_streams(base_url: str, api_key: str, client: Client, honest: str,
                                 attacker: MinerCredentials) -> None:
    """The next streamed job ends normally with the verified answer; nothing was credited to the attacker."""
    after = Victim(base_url, api_key, "Name a colour.").finish()
    assert not after.errors and after.finish_reasons and after.shown == verified_text(client, after.job_id, honest)
    assert not client.ledger.is_registered(attacker.address)
    assert attacker.address not in {m.address for m in client.ledger.miner_points()}


def test_unkeyed_chunks_never_reach_the_victim(network: EmbeddedNetwork, client: Client, base_url: str,
                                               api_key: str, honest: str, attacker: MinerCredentials,
                                               caplog: pytest.LogCaptureFixture) -> None:
    queue = client.catalog[MODEL].queue
    caplog.set_level(logging.INFO, logger="heurist.streams")
    with busy_miner(network, client):
        victim = Victim(base_url, api_key, "What is the capital of France?")
        job = steal_job(attacker, queue)
        inject(attacker, job["job_id"], key=None)  # it knows the job id, not how to MAC
    victim.finish()
    assert victim.job_id == job["job_id"]
    assert not victim.errors and victim.finish_reasons, victim.events
    assert EVIL not in victim.shown and "Berlin" not in victim.shown
    assert victim.shown == verified_text(client, victim.job_id, honest)
    assert f"dropped a streamed chunk (bad MAC) from broker user {attacker.user}" in caplog.text
    honest_network_still_streams(base_url, api_key, client, honest, attacker)


def test_keyed_chunks_after_the_honest_miner_started_are_dropped(
        network: EmbeddedNetwork, client: Client, base_url: str, api_key: str, honest: str,
        attacker: MinerCredentials, caplog: pytest.LogCaptureFixture) -> None:
    queue = client.catalog[MODEL].queue
    caplog.set_level(logging.INFO, logger="heurist.streams")
    with busy_miner(network, client):
        victim = Victim(base_url, api_key, "What is the capital of France?")
        job = steal_job(attacker, queue)
    wait_until(lambda: victim.shown != "" or victim.done.done(), 120, "the honest miner's first token")
    inject(attacker, job["job_id"], key=job["stream_key"])  # the stream is already locked to the honest miner
    victim.finish()
    assert not victim.errors and victim.finish_reasons, victim.events
    assert EVIL not in victim.shown
    assert victim.shown == verified_text(client, victim.job_id, honest)
    assert (f"dropped a streamed chunk (valid MAC from another broker user) from broker user {attacker.user}; "
            f"the stream is locked to {miner_user(honest)}") in caplog.text
    honest_network_still_streams(base_url, api_key, client, honest, attacker)


def test_a_same_tier_miner_racing_with_the_key_ends_in_an_error_naming_it(
        network: EmbeddedNetwork, client: Client, base_url: str, api_key: str, honest: str,
        attacker: MinerCredentials, caplog: pytest.LogCaptureFixture) -> None:
    queue = client.catalog[MODEL].queue
    with busy_miner(network, client):
        victim = Victim(base_url, api_key, "What is the capital of France?")
        job = steal_job(attacker, queue)
        inject(attacker, job["job_id"], key=job["stream_key"])  # before the honest miner even has the job
    victim.finish()
    assert victim.finish_reasons == [], "a final event after the attacker's stream"
    [error] = victim.errors
    assert error["code"] == "stream_mismatch" and "broker_user" not in error and victim.job_id in error["message"]
    assert attacker.user not in error["message"] and miner_user(honest) not in error["message"]  # no miner named
    assert f"the completing miner is broker user {miner_user(honest)!r}, so broker user {attacker.user!r} " \
           "injected it" in caplog.text  # the operator's log: the ledger's key-to-user binding names the thief
    assert EVIL in victim.shown  # the residual: a same-tier miner's previews are shown until the check
    verified_text(client, victim.job_id, honest)  # the verified answer is the honest miner's
    honest_network_still_streams(base_url, api_key, client, honest, attacker)


def test_a_racing_miner_that_only_ends_the_stream_early_gains_nothing(
        network: EmbeddedNetwork, client: Client, base_url: str, api_key: str, honest: str,
        attacker: MinerCredentials, caplog: pytest.LogCaptureFixture) -> None:
    """It wins the lock with a keyed ``done`` and no text, hoping to blank or break every stream of its tier: the
    shown text ("") is a prefix of the verified answer, so the gateway sends the verified answer, then the final
    event."""
    queue = client.catalog[MODEL].queue
    with busy_miner(network, client):
        victim = Victim(base_url, api_key, "What is the capital of France?")
        job = steal_job(attacker, queue)
        with Connection(attacker.broker_url) as conn:
            done = sealed(job["stream_key"], job_id=job["job_id"], index=0, text="", done=True, finish_reason="stop")
            Producer(conn.channel()).publish(done.model_dump(mode="json"), exchange=STREAM_EXCHANGE,
                                             routing_key=job["job_id"], serializer="json", user_id=attacker.user)
    victim.finish()
    assert not victim.errors and victim.finish_reasons, victim.events
    contents = [e["choices"][0]["delta"].get("content") for e in victim.events if e.get("choices")]
    verified = verified_text(client, victim.job_id, honest)
    assert contents[1] == verified == victim.shown  # one delta, from the verified answer
    assert (f"the stream was locked to broker user {attacker.user!r}, not to the completing miner's broker user "
            f"{miner_user(honest)!r}") in caplog.text  # and the thief is named in the gateway's log
    honest_network_still_streams(base_url, api_key, client, honest, attacker)
