"""The OpenAI-compatible LLM gateway on a live network, driven by the unchanged official `openai` client and
by LiteLLM's `openai/` provider: list models, chat, streaming chat, completions; credits settled at the
verified token counts. The gateway runs under uvicorn on a real port; jobs run on a SmolLM2 miner process
over RabbitMQ + PostgreSQL + SeaweedFS."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest
import requests

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # LiteLLM must not fetch anything at import

import litellm
import openai

from heurist.client import Client
from heurist.credits.ledger import CreditLedger
from heurist.embedded import EmbeddedNetwork
from heurist.gateway.app import create_app
from tests.fixtures.gateway import serving

MODEL = "smollm2-135m"
QUESTION = [{"role": "user", "content": "Name three primary colors."}]


@pytest.fixture(scope="module")
def base_url(network: EmbeddedNetwork, client: Client, miner_address: str) -> Iterator[str]:
    app = create_app(network.settings().model_copy(update={"gateway_rate_per_minute": 1000}), client,
                     CreditLedger(client.ledger.engine))
    with serving(app) as url:
        yield url


@pytest.fixture(scope="module")
def credits(client: Client) -> CreditLedger:
    return CreditLedger(client.ledger.engine)


@pytest.fixture()
def key(credits: CreditLedger) -> tuple[int, str]:
    return credits.create_key("llm-test", 5.0)


@pytest.fixture()
def oai(base_url: str, key: tuple[int, str]) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key=key[1], max_retries=0, timeout=300)


def test_models_lists_the_catalog(oai: openai.OpenAI) -> None:
    ids = {m.id for m in oai.models.list()}
    assert {MODEL, "tiny-sd"} <= ids


def test_chat_completion_is_a_verified_job_charged_by_tokens(oai: openai.OpenAI, credits: CreditLedger,
                                                             key: tuple[int, str], client: Client) -> None:
    reply = oai.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=16)  # type: ignore[arg-type]
    text = reply.choices[0].message.content or ""
    assert text and reply.usage is not None and 0 < reply.usage.completion_tokens <= 16
    job_id = reply.id.removeprefix("chatcmpl-")
    view = client.ledger.job(job_id)
    assert view is not None and view.state.has_output and view.output_tokens == reply.usage.completion_tokens
    spent = 5.0 - credits.balance(key[0])
    assert spent > 0 and spent == pytest.approx(reply.model_extra["units_charged"])  # type: ignore[index]
    assert credits.balance(key[0]) == pytest.approx(credits.entries_total(key[0]))


def test_streaming_chat_arrives_token_by_token(oai: openai.OpenAI, client: Client) -> None:
    stream = oai.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=24, stream=True,  # type: ignore[arg-type]
                                         stream_options={"include_usage": True})
    pieces, finish, usage, arrivals = [], None, None, []
    for event in stream:
        if event.choices and event.choices[0].delta.content:
            pieces.append(event.choices[0].delta.content)
            arrivals.append(time.monotonic())
        if event.choices and event.choices[0].finish_reason:
            finish = event.choices[0].finish_reason
        if event.usage:
            usage = event.usage
    assert len(pieces) > 3 and finish in ("stop", "length") and usage is not None
    assert arrivals[-1] - arrivals[0] > 0.05  # spread over generation, not one burst at the end
    job_id = event.id.removeprefix("chatcmpl-")
    stored = client.ledger.job(job_id)
    assert stored is not None and stored.state.has_output and stored.output_tokens == usage.completion_tokens


def test_completions_endpoint(oai: openai.OpenAI) -> None:
    reply = oai.completions.create(model=MODEL, prompt="Say hello in French.", max_tokens=8)
    assert reply.choices[0].text and reply.usage is not None and reply.usage.completion_tokens <= 8


def test_openai_errors_come_back_as_openai_errors(oai: openai.OpenAI, base_url: str) -> None:
    with pytest.raises(openai.NotFoundError):
        oai.chat.completions.create(model="no-such-model", messages=QUESTION)  # type: ignore[arg-type]
    with pytest.raises(openai.UnprocessableEntityError):
        oai.chat.completions.create(model="tiny-sd", messages=QUESTION)  # type: ignore[arg-type]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=base_url, api_key="hk_wrong", max_retries=0).models.list()


def test_overdraw_is_402_before_any_job(oai: openai.OpenAI, credits: CreditLedger, client: Client,
                                        base_url: str) -> None:
    _, poor = credits.create_key("poor", 0.0)
    before = sum(client.ledger.totals().jobs.values())
    with pytest.raises(openai.APIStatusError) as err:
        openai.OpenAI(base_url=base_url, api_key=poor, max_retries=0).chat.completions.create(
            model=MODEL, messages=QUESTION, max_tokens=8)  # type: ignore[arg-type]
    assert err.value.status_code == 402
    assert sum(client.ledger.totals().jobs.values()) == before


def test_litellm_openai_provider(base_url: str, key: tuple[int, str]) -> None:
    common = {"model": f"openai/{MODEL}", "api_base": base_url, "api_key": key[1], "messages": QUESTION,
              "max_tokens": 12}
    reply = litellm.completion(**common)
    assert reply.choices[0].message.content
    streamed = "".join(c.choices[0].delta.content or "" for c in litellm.completion(**common, stream=True))
    assert streamed


DOCUMENTS = [
    ("Honeybees", "Honeybees live in colonies led by a queen. Worker bees gather nectar and pollen and make honey "
                  "in wax combs; they tell each other where flowers are with a waggle dance."),
    ("Volcanoes", "A volcano is an opening in the crust where molten rock, ash and gases escape. Magma that "
                  "reaches the surface is called lava; eruptions can build mountains over centuries."),
    ("Sourdough", "Sourdough bread rises with a starter of wild yeast and lactic acid bacteria instead of baker's "
                  "yeast. The starter is fed flour and water daily, which gives the bread its sour taste."),
]


def test_search_answers_from_ingested_documents_with_references(base_url: str, key: tuple[int, str],
                                                                 credits: CreditLedger, client: Client) -> None:
    headers = {"Authorization": f"Bearer {key[1]}"}
    for title, text in DOCUMENTS:
        resp = requests.post(f"{base_url}/documents", json={"title": title, "text": text}, headers=headers, timeout=120)
        assert resp.status_code == 200 and resp.json()["chunks"] >= 1, resp.text
    title, text = DOCUMENTS[0]
    again = requests.post(f"{base_url}/documents", json={"title": title, "text": text}, headers=headers, timeout=120)
    assert again.status_code == 200 and again.json()["duplicate"] is True, again.text  # stored once
    resp = requests.post(f"{base_url}/search", json={"question": "How do bees tell each other where flowers are?",
                                                     "max_tokens": 32}, headers=headers, timeout=300)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["references"][0]["title"] == "Honeybees" and body["references"][0]["n"] == 1
    assert body["answer"] and body["units_charged"] > 0
    assert 1 in body["cited"] and "[1]" in body["answer"]  # the answer cites the Honeybees document
    view = client.ledger.job(body["job_id"])
    assert view is not None and view.state.has_output  # the answer is a verified network job
    bad = requests.post(f"{base_url}/search", json={"question": ""}, headers=headers, timeout=30)
    assert bad.status_code == 422 and bad.json()["error"]["param"] == "question"
    blank = requests.post(f"{base_url}/documents", json={"title": "t", "text": " "}, headers=headers, timeout=30)
    assert blank.status_code == 422 and blank.json()["error"]["param"] == "text"  # schemathesis found a 500 here


def test_documents_belong_to_their_key_cost_by_size_and_have_a_limit(base_url: str, credits: CreditLedger) -> None:
    """Issue 13, finding 5: one key's search returned another key's confidential document, and ingestion was
    free (199 kB of junk took 9 s of gateway CPU). Now documents belong to their key, cost by size, and a
    document over the limit is refused with 413 before any work."""
    (a_id, a_key), (b_id, b_key) = credits.create_key("tenant-a", 10.0), credits.create_key("tenant-b", 10.0)
    as_a, as_b = {"Authorization": f"Bearer {a_key}"}, {"Authorization": f"Bearer {b_key}"}
    secret = {"title": "Merger plan", "text": "Project Lighthouse: Acme acquires Globex in March for 2.1 billion."}
    size = len(secret["text"].encode())
    resp = requests.post(f"{base_url}/documents", json=secret, headers=as_a, timeout=120)
    assert resp.status_code == 200, resp.text
    assert resp.json()["units_charged"] == pytest.approx(size * 2 / 1e6)  # 2 millionths of a unit per byte
    assert credits.balance(a_id) == pytest.approx(10.0 - size * 2 / 1e6)

    found = requests.post(f"{base_url}/search", json={"question": "Who does Acme acquire?", "k": 10,
                                                       "max_tokens": 8}, headers=as_b, timeout=300).json()
    assert found["references"] == [] and found["job_id"] is None and "Globex" not in found["answer"]
    own = requests.post(f"{base_url}/search", json={"question": "Who does Acme acquire?", "k": 1,
                                                     "max_tokens": 8}, headers=as_a, timeout=300).json()
    assert own["references"][0]["title"] == "Merger plan"

    copy = requests.post(f"{base_url}/documents", json=secret, headers=as_b, timeout=120).json()
    assert copy["duplicate"] is False and copy["id"] != resp.json()["id"]  # B learns nothing of A's store
    assert credits.balance(b_id) == pytest.approx(10.0 - size * 2 / 1e6)

    before = credits.balance(a_id)
    big = requests.post(f"{base_url}/documents", json={"title": "Junk", "text": "lorem ipsum " * 17_000},
                        headers=as_a, timeout=60)
    assert big.status_code == 413 and big.json()["error"]["code"] == "document_too_large", big.text
    error = big.json()["error"]
    assert error["param"] == "text" and "HEURIST_SEARCH_MAX_DOCUMENT_BYTES" in error["message"]
    assert credits.balance(a_id) == before  # refused before any work or charge
    _, broke = credits.create_key("tenant-broke", 0.0)
    poor = requests.post(f"{base_url}/documents", json={"title": "t", "text": "some words"},
                         headers={"Authorization": f"Bearer {broke}"}, timeout=60)
    assert poor.status_code == 402, poor.text
