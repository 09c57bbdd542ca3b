"""Streamed tokens: the real SmolLM2 pipeline's text deltas, and a real ``MinerRuntime`` publishing them
over RabbitMQ and the embedded SQLite broker to a ``TokenStream``, compared with the stored answer; the
receiver's checks (MAC, broker user, order, size, content type) against raw publishes; the final check.
The attacks from a restricted miner user are in tests/adversary/test_stream_injection.py.

Run with ``-s`` to see the latency from a token being generated to the application receiving it.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"

from celery import Celery
from kombu import Connection

from heurist.catalog import load_catalog
from heurist.celery_app import create_app
from heurist.errors import JobTimeoutError
from heurist.identity import Wallet
from heurist.jobs import ImageParams, JobMessage, TextOutput, TextParams, TokenChunk
from heurist.settings import Settings
from heurist.storage.backends.s3 import S3ObjectStore
from heurist.stream_auth import StreamMismatchError, check_stream, chunk_mac, new_stream_key, sealed
from heurist.streams import STREAM_EXCHANGE, TokenStream, stream_queue_name
from workers.miner.device import detect_device
from workers.miner.pipelines import load_pipeline
from workers.miner.pipelines.backend import OnToken, Pipeline, PipelineOutput
from workers.miner.pipelines.backends.causal_lm import CausalLMPipeline, TokenDeltas
from workers.miner.runtime import MinerRuntime

MODEL = "smollm2-135m"
PROMPT = "Write one sentence about rain."


class Clocked(Pipeline):
    """The real pipeline, noting when each token is made (before it is published)."""

    def __init__(self, inner: Pipeline) -> None:
        self.inner, self.spec, self.weights_sha256 = inner, inner.spec, inner.weights_sha256
        self.made: list[float] = []

    def run(self, params: ImageParams | TextParams, deadline_at: float,
            on_token: OnToken | None = None) -> PipelineOutput:
        self.made = []

        def clocked(token_id: int, text: str) -> None:
            self.made.append(time.perf_counter())
            assert on_token is not None
            on_token(token_id, text)

        return self.inner.run(params, deadline_at, on_token=None if on_token is None else clocked)


@pytest.fixture(scope="module")
def smollm(shared_models_dir: Path) -> Clocked:
    pipeline = load_pipeline(load_catalog()[MODEL], detect_device("cpu"), shared_models_dir)
    return Clocked(pipeline)


def _text_job(store: S3ObjectStore, stream: bool, max_tokens: int = 16) -> tuple[JobMessage, str]:
    job_id = str(uuid.uuid4())
    key = f"outputs/{MODEL}/{job_id}.json"
    job = JobMessage(job_id=job_id, model_id=MODEL, params=TextParams(prompt=PROMPT, max_tokens=max_tokens),
                     output_url=store.presign_put(key, 600), deadline_at=time.time() + 600, stream=stream,
                     stream_key=new_stream_key() if stream else None)
    return job, key


@pytest.fixture(scope="module")
def rabbit_app(rabbit_url: str) -> Iterator[Celery]:
    app = create_app(Settings(_env_file=None, broker_url=rabbit_url))  # type: ignore[call-arg]
    yield app
    app.close()


@pytest.fixture(scope="module")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"embedded+sqlite:///{tmp_path_factory.mktemp('broker') / 'broker.sqlite'}"


@pytest.fixture(scope="module")
def sqlite_app(sqlite_url: str) -> Iterator[Celery]:
    app = create_app(Settings(_env_file=None, broker_url=sqlite_url))  # type: ignore[call-arg]
    yield app
    app.close()


# --- the pipeline ------------------------------------------------------------------------------------


def test_deltas_hold_back_split_characters_and_add_up_to_the_decoded_text(smollm: Clocked) -> None:
    tokenizer = smollm.inner.tokenizer  # type: ignore[attr-defined]
    ids = tokenizer("héllo 日本語 ok", add_special_tokens=False)["input_ids"]
    got: list[tuple[int, str]] = []
    deltas = TokenDeltas(tokenizer, lambda token, text: got.append((token, text)))
    deltas.put(tokenizer("prompt", return_tensors="pt")["input_ids"])  # generate() sends the prompt first
    for token in ids:
        deltas.put(torch.tensor([token]))
    deltas.end()
    assert [token for token, _ in got] == ids
    assert "".join(text for _, text in got) == "héllo 日本語 ok"
    assert not any("\ufffd" in text for _, text in got)


def test_streamed_deltas_add_up_to_the_answer_and_come_while_generating(smollm: Clocked) -> None:
    assert isinstance(smollm.inner, CausalLMPipeline)
    got: list[tuple[float, int, str]] = []
    output = smollm.run(TextParams(prompt=PROMPT, max_tokens=32), time.time() + 600,
                        on_token=lambda token, text: got.append((time.perf_counter(), token, text)))
    ended = time.perf_counter()
    answer = TextOutput.model_validate_json(output.data)
    assert "".join(text for _, _, text in got) == answer.text and answer.text
    assert [token for _, token, _ in got] == answer.output_token_ids
    assert output.finish_reason == answer.finish_reason
    assert got[0][0] < ended - 0.5, "the first token must come well before generation ends"


# --- over a broker --------------------------------------------------------------------------------------


def _streamed(app: Celery, broker_url: str, smollm: Clocked, store: S3ObjectStore,
              user: str | None) -> tuple[list[TokenChunk], list[float], TextOutput]:
    """Run a job on a real runtime in a worker thread while this thread reads its stream."""
    job, key = _text_job(store, True)
    runtime = MinerRuntime(wallet=Wallet.create(), device=detect_device("cpu").info, pipelines={MODEL: smollm})
    chunks: list[TokenChunk] = []
    received: list[float] = []
    with TokenStream(broker_url, job.job_id, chunk_timeout_s=30, key=job.stream_key) as tokens, \
            ThreadPoolExecutor(1) as pool:
        running = pool.submit(runtime.execute, job, app.producer_pool)  # the job is sent after the queue exists
        for chunk in tokens:
            received.append(time.perf_counter())
            chunks.append(chunk)
        signed = running.result(timeout=120)
    assert signed.completion.job_id == job.job_id
    assert signed.output is not None and store.stat(key) is None  # inline (heurist.ledger.inline): not uploaded
    stored = TextOutput.model_validate_json(signed.output)
    assert tokens.user == user and not tokens.dropped  # locked to the miner's broker user (none when embedded)
    assert tokens.verify(stored.text) == ""
    return chunks, received, stored


def _check(name: str, chunks: list[TokenChunk], received: list[float], made: list[float],
           stored: TextOutput) -> None:
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert chunks[-1].done and not any(c.done for c in chunks[:-1])
    assert chunks[-1].finish_reason == stored.finish_reason
    assert [c.token_id for c in chunks[:-1]] == stored.output_token_ids
    assert "".join(c.text for c in chunks) == stored.text
    assert received[0] < made[-1], "the first chunk must arrive before the last token is made"
    latency = [r - m for r, m in zip(received, made, strict=False)]
    print(f"\n{name}: {len(made)} tokens, generated→received median {statistics.median(latency) * 1000:.1f} ms, "
          f"max {max(latency) * 1000:.1f} ms")
    assert statistics.median(latency) < 0.5


def test_rabbitmq_streams_the_stored_answer_token_by_token(rabbit_app: Celery, rabbit_url: str, smollm: Clocked,
                                                            object_store: S3ObjectStore) -> None:
    chunks, received, stored = _streamed(rabbit_app, rabbit_url, smollm, object_store, user="guest")
    _check("RabbitMQ", chunks, received, smollm.made, stored)


def test_embedded_sqlite_streams_the_stored_answer_and_leaves_no_messages(
        sqlite_app: Celery, sqlite_url: str, smollm: Clocked, object_store: S3ObjectStore) -> None:
    chunks, received, stored = _streamed(sqlite_app, sqlite_url, smollm, object_store, user=None)
    _check("embedded SQLite", chunks, received, smollm.made, stored)
    with Connection(sqlite_url) as conn:
        assert conn.default_channel.queue_declare(stream_queue_name(chunks[0].job_id)).message_count == 0


def test_a_job_without_stream_publishes_nothing(rabbit_app: Celery, rabbit_url: str, smollm: Clocked,
                                                object_store: S3ObjectStore) -> None:
    job, _ = _text_job(object_store, stream=False, max_tokens=4)
    runtime = MinerRuntime(wallet=Wallet.create(), device=detect_device("cpu").info, pipelines={MODEL: smollm})
    with TokenStream(rabbit_url, job.job_id, chunk_timeout_s=0.5) as tokens:
        runtime.execute(job, rabbit_app.producer_pool)
        with pytest.raises(JobTimeoutError, match=job.job_id):
            next(iter(tokens))
    assert smollm.made == []  # the pipeline got no callback at all


def test_a_refused_stream_does_not_fail_the_job(rabbit_app: Celery, rabbit_url: str, smollm: Clocked,
                                                object_store: S3ObjectStore, caplog: pytest.LogCaptureFixture) -> None:
    with Connection(rabbit_url) as admin:
        admin.default_channel.exchange_delete(STREAM_EXCHANGE)  # publishing now closes the channel (404)
    job, key = _text_job(object_store, stream=True, max_tokens=4)
    runtime = MinerRuntime(wallet=Wallet.create(), device=detect_device("cpu").info, pipelines={MODEL: smollm})
    with caplog.at_level(logging.WARNING, logger="workers.miner.streaming"):
        signed = runtime.execute(job, rabbit_app.producer_pool)
    assert signed.completion.output_tokens == 4
    assert signed.output is not None and TextOutput.model_validate_json(signed.output).output_tokens == 4
    assert object_store.stat(key) is None  # sent inline, not uploaded
    assert job.job_id in caplog.text
    # the worker's own producers still work after the refusal
    with rabbit_app.producer_pool.acquire(block=True) as producer:
        producer.publish({"ok": 1}, exchange="", routing_key="unrouted-check", retry=False)



# --- what a receiver accepts --------------------------------------------------------------------------


def test_the_mac_covers_every_field_and_the_key() -> None:
    key = new_stream_key()
    chunk = sealed(key, job_id="j", index=3, text="Paris", token_id=7)
    assert chunk.mac == chunk_mac(key, chunk) and len(key) == 64
    for change in ({"job_id": "k"}, {"index": 4}, {"text": "Berlin"}, {"token_id": 8}, {"done": True},
                   {"finish_reason": "stop"}):
        assert chunk_mac(key, chunk.model_copy(update=change)) != chunk.mac, change
    assert chunk_mac(new_stream_key(), chunk) != chunk.mac


def test_a_job_message_streams_exactly_when_it_has_a_stream_key(object_store: S3ObjectStore) -> None:
    job, _ = _text_job(object_store, stream=True)
    fields = job.model_dump()
    with pytest.raises(ValueError, match="stream_key"):
        JobMessage.model_validate({**fields, "stream_key": None})
    with pytest.raises(ValueError, match="stream_key"):
        JobMessage.model_validate({**fields, "stream": False})
    with pytest.raises(ValueError, match="stream_key"):
        JobMessage.model_validate({**fields, "stream_key": "ab" * 16})  # too short


def test_the_final_check_accepts_the_verified_text_or_its_prefix_and_nothing_else() -> None:
    assert check_stream("j", "Paris.", "Paris.", "miner-a", None) == ""
    assert check_stream("j", "Pa", "Paris.", "miner-a", "miner-a") == "ris."  # stopped short: the rest is sent
    with pytest.raises(StreamMismatchError, match="not the verified answer") as err:
        check_stream("j", "Berlin. Send your API key", "Paris.", "miner-evil", None)
    assert err.value.broker_user == "miner-evil" and "miner-evil" in str(err.value)
    # locked to a user that is not the completing miner's: named, and an error only if what it showed is wrong
    assert check_stream("j", "", "Paris.", "miner-evil", "miner-a") == "Paris."
    with pytest.raises(StreamMismatchError, match="completing miner is broker user 'miner-a', so broker user "
                                                  "'miner-evil' injected it"):
        check_stream("j", "Berlin.", "Paris.", "miner-evil", "miner-a")


def _publish(conn: Connection, job_id: str, body: object, **options: object) -> None:
    """Publish to ``job_id``'s stream as anyone on ``conn`` may (RabbitMQ: through ``heurist.stream``)."""
    from kombu import Producer

    from heurist.streams import stream_route
    exchange, routing_key = stream_route(conn, job_id)
    options.setdefault("serializer", "json")
    Producer(conn.channel()).publish(body, exchange=exchange, routing_key=routing_key, retry=False, **options)


def test_rabbitmq_receiver_shows_only_keyed_chunks_from_one_user_in_order(rabbit_url: str) -> None:
    job_id = str(uuid.uuid4())
    with TokenStream(rabbit_url, job_id, chunk_timeout_s=10) as tokens, Connection(rabbit_url) as conn:
        key, as_guest = tokens.key, {"user_id": "guest"}
        _publish(conn, job_id, {"job_id": job_id, "index": 0, "text": "Berlin"}, **as_guest)  # no MAC
        _publish(conn, job_id, sealed(new_stream_key(), job_id=job_id, index=0, text="Berlin").model_dump(),
                 **as_guest)  # another key
        _publish(conn, job_id, sealed(key, job_id=job_id, index=0, text="Berlin").model_dump())  # no user_id
        _publish(conn, job_id, b"\x80\x04junk", serializer=None, content_type="application/x-python-serialize",
                 content_encoding="binary", **as_guest)  # kombu would unpickle nothing, but must not stop either
        _publish(conn, job_id, b"{not json", serializer=None, content_type="application/json",
                 content_encoding="utf-8", **as_guest)
        _publish(conn, job_id, {"job_id": job_id, "index": 0, "text": "x" * 20_000}, **as_guest)  # oversized
        _publish(conn, job_id, sealed(key, job_id="other", index=0, text="Berlin").model_dump(), **as_guest)
        _publish(conn, job_id, sealed(key, job_id=job_id, index=0, text="Par").model_dump(), **as_guest)
        _publish(conn, job_id, sealed(key, job_id=job_id, index=0, text="Ber").model_dump(), **as_guest)  # replay
        _publish(conn, job_id, sealed(key, job_id=job_id, index=1, text="is.", done=True,
                                      finish_reason="stop").model_dump(), **as_guest)
        shown = [c.text for c in tokens]
    assert shown == ["Par", "is."] and tokens.text == "Paris." and tokens.user == "guest"
    assert tokens.dropped == {"bad MAC": 2, "no user_id": 1, "malformed": 2, "oversized": 1, "other job": 1,
                              "out of order": 1}
    assert tokens.verify("Paris.") == ""


def test_junk_does_not_keep_a_stream_waiting(rabbit_url: str) -> None:
    """The chunk timeout counts from the last authentic chunk, not from the last message."""
    job_id = str(uuid.uuid4())
    started = time.monotonic()
    with TokenStream(rabbit_url, job_id, chunk_timeout_s=1.0) as tokens, Connection(rabbit_url) as conn, \
            ThreadPoolExecutor(1) as pool:
        def flood() -> None:
            while time.monotonic() - started < 3:
                _publish(conn, job_id, {"job_id": job_id, "index": 0, "text": "Berlin"})
                time.sleep(0.05)
        flooding = pool.submit(flood)
        with pytest.raises(JobTimeoutError, match=job_id):
            list(tokens)
        waited = time.monotonic() - started
        flooding.result()
    assert 0.9 < waited < 2.0 and tokens.dropped["bad MAC"] > 5 and tokens.text == ""


def test_embedded_broker_has_no_users_so_only_the_mac_holds(sqlite_url: str, sqlite_app: Celery) -> None:
    job_id = str(uuid.uuid4())
    with TokenStream(sqlite_url, job_id, chunk_timeout_s=10) as tokens, Connection(sqlite_url) as conn:
        _publish(conn, job_id, {"job_id": job_id, "index": 0, "text": "Berlin"}, user_id="anyone")
        _publish(conn, job_id, sealed(tokens.key, job_id=job_id, index=0, text="Paris.", done=True).model_dump())
        shown = [c.text for c in tokens]
    assert shown == ["Paris."] and tokens.user is None and tokens.dropped == {"bad MAC": 1}
