"""OpenAI-compatible LLM endpoints: GET /v1/models, POST /v1/chat/completions, POST /v1/completions.

Each request is one text job on the network. Credits are reserved for the worst case (prompt bytes plus
``max_tokens``) before the job is sent, then settled at the verified token counts; a failed job is refunded.
With ``stream: true`` the answer arrives as server-sent events, token by token as the miner produces them
(``heurist.streams``); those tokens are previews, so the closing event (finish reason, usage) is sent only
once the ledger has verified the stored answer, and an answer that fails verification ends with an error.
The stream shows only chunks MACed with the job's stream key from one broker user, and its text must be the
verified answer (or a prefix of it, the rest then sent from the verified answer), else it ends with a
``stream_mismatch`` error event naming the stream's broker user (``heurist.stream_auth``).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

from heurist.catalog import JobKind, ModelSpec
from heurist.credits.pricing import price_units
from heurist.credits.tables import ApiKey
from heurist.db.engine import is_disconnect
from heurist.errors import HeuristError, JobTimeoutError, public_failure
from heurist.gateway.charging import wait_all
from heurist.gateway.deps import ERRORS, Gateway, gateway, limited_key
from heurist.gateway.errors import ApiError, error_body, from_database, from_heurist
from heurist.gateway.llm_schemas import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionRequest,
    CompletionRequest,
    ModelCard,
    ModelList,
    TextChoice,
    TextCompletion,
    Usage,
    chunk,
)
from heurist.jobs import TextOutput, TextParams
from heurist.points import job_points
from heurist.stream_auth import StreamMismatchError
from heurist.streams import TokenStream
from heurist.submission import text_params

log = logging.getLogger(__name__)
router = APIRouter(tags=["llm"])


@dataclass(frozen=True)
class TextJob:
    """A text job paid for and not yet sent."""

    job_id: str
    spec: ModelSpec
    params: TextParams
    created: int


def start(gw: Gateway, key_id: int, model: str, prompt: str, req: ChatCompletionRequest | CompletionRequest) -> TextJob:
    """Validate (422 naming the field) and reserve the worst-case price (402): nothing is sent yet."""
    spec = gw.client.catalog[model]
    if spec.kind is not JobKind.TEXT:
        raise ApiError(422, f"model: {spec.id} makes images; use POST /v1/images/generations", param="model",
                       code="invalid_value")
    params = text_params(spec, prompt, max_tokens=req.token_limit(), temperature=req.temperature or 0.0,
                         seed=req.seed or 0)
    job = TextJob(str(uuid.uuid4()), spec, params, int(time.time()))
    gw.credits.reserve(key_id, job.job_id, price_units(spec, params))
    return job


def send(gw: Gateway, job: TextJob, stream_key: str | None = None) -> None:
    """Submit the reserved job (streamed with ``stream_key``); if it cannot be sent its reservation is refunded."""
    try:
        gw.client.submit_params(job.spec, job.params, job_id=job.job_id, stream_key=stream_key)
    except BaseException:
        gw.credits.refund(job.job_id)
        raise


def finish(gw: Gateway, job: TextJob) -> tuple[TextOutput, float]:
    """Wait for the verified answer and settle at its token counts; a failed job is refunded (502)."""
    [view] = wait_all(gw.client, [job.job_id], gw.settings.gateway_timeout_s)
    if not view.state.has_output:
        gw.credits.refund(job.job_id)
        raise ApiError(502, f"{public_failure(job.job_id, view.state, view.error)}; refunded", type_="job_failed",
                       code="job_failed", job_ids=[job.job_id])
    output = TextOutput.model_validate_json(gw.client.fetch_output(gw.client.to_result(view)))
    actual = job_points(job.spec, job.params, output.input_tokens, output.output_tokens)
    gw.credits.settle(job.job_id, actual)
    return output, gw.credits.charged(job.job_id)  # what was kept, even if the sweep settled it first


def usage(output: TextOutput) -> Usage:
    return Usage(prompt_tokens=output.input_tokens, completion_tokens=output.output_tokens,
                 total_tokens=output.input_tokens + output.output_tokens)


def complete(gw: Gateway, job: TextJob) -> tuple[TextOutput, float]:
    send(gw, job)
    return finish(gw, job)


def completing_broker_user(gw: Gateway, job_id: str) -> str | None:
    """The broker user of the miner whose completion the ledger verified for ``job_id``: a stream must come from
    it. None when the ledger knows none (the embedded broker, a miner on a trusted user): the text check decides."""
    view = gw.client.ledger.job(job_id)
    return None if view is None or view.miner is None else gw.client.ledger.broker_user(view.miner)


STALL_CHECK_S = 5.0  # a stream silent this long: is the job verified already?


def _sse(body: dict[str, Any]) -> str:
    return f"data: {json.dumps(body, separators=(',', ':'))}\n\n"


def previews(gw: Gateway, job: TextJob, stream: TokenStream) -> Iterator[str]:
    """The streamed tokens' text, until ``done``, or until the job is verified while the stream is silent (a
    miner that raced the honest one to the first chunk, locking the stream, then went quiet: the verified answer
    follows instead), or until the gateway's timeout."""
    give_up = time.monotonic() + gw.settings.gateway_timeout_s
    while True:
        try:
            for piece in stream:
                yield piece.text
            return
        except JobTimeoutError:
            if _terminal(gw, job.job_id) or time.monotonic() > give_up:
                return


def _terminal(gw: Gateway, job_id: str) -> bool:
    """Whether the ledger has a verdict on the job; False while its database is away (the stream goes on)."""
    try:
        view = gw.client.ledger.job(job_id)
    except SQLAlchemyError as err:
        if not is_disconnect(err):
            raise
        return False
    return view is not None and view.state.terminal


def events(gw: Gateway, job: TextJob, kind: str, include_usage: bool) -> Iterator[str]:
    """The SSE body: a role event (chat), one event per streamed token, then the verified ending."""
    model = job.spec.id
    try:
        with TokenStream(gw.settings.resolved_broker_url(), job.job_id, chunk_timeout_s=STALL_CHECK_S) as stream:
            send(gw, job, stream.key)
            if kind == "chat":
                yield _sse(chunk(job.job_id, job.created, model, kind, {"role": "assistant", "content": ""}, None))
            for text in previews(gw, job, stream):
                if text:
                    yield _sse(chunk(job.job_id, job.created, model, kind, {"content": text}, None))
        output, _ = finish(gw, job)
        rest = stream.verify(output.text, completing_broker_user(gw, job.job_id))
        if rest:  # the stream stopped short (its sender sent `done` early): the rest comes from the verified answer
            yield _sse(chunk(job.job_id, job.created, model, kind, {"content": rest}, None))
        yield _sse(chunk(job.job_id, job.created, model, kind, {}, output.finish_reason))
        if include_usage:
            yield _sse(chunk(job.job_id, job.created, model, kind, {}, None, usage(output)))
    except StreamMismatchError as err:
        log.warning("%s", err)  # the operator's record names the broker user; the caller's error names no miner
        yield _sse(error_body(err.public or str(err), "stream_mismatch", None, "stream_mismatch",
                              job_ids=[job.job_id]))
    except (ApiError, HeuristError, SQLAlchemyError) as err:
        api = err if isinstance(err, ApiError) else from_database(err) if isinstance(err, SQLAlchemyError) \
            else from_heurist(err)
        yield _sse(error_body(api.message, api.type, api.param, api.code, job_ids=[job.job_id]))
    yield "data: [DONE]\n\n"


def _streaming(gw: Gateway, job: TextJob, kind: str, include_usage: bool) -> StreamingResponse:
    return StreamingResponse(iterate_in_threadpool(events(gw, job, kind, include_usage)),
                             media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


@router.get("/v1/models", response_model=ModelList, responses=ERRORS)
async def list_models(gw: Gateway = Depends(gateway), key: ApiKey = Depends(limited_key)) -> ModelList:
    """Every catalog model; ``kind`` says which endpoint runs it."""
    catalog = gw.client.catalog
    return ModelList(data=[ModelCard(id=m.id, kind=m.kind.value) for m in catalog.models.values()])


@router.post("/v1/chat/completions", response_model=ChatCompletion, responses=ERRORS)
async def chat_completions(req: ChatCompletionRequest, gw: Gateway = Depends(gateway),
                           key: ApiKey = Depends(limited_key)) -> Any:
    """A chat answer as one network job; ``stream: true`` answers with server-sent events."""
    job = await run_in_threadpool(start, gw, key.id, req.model, req.prompt(), req)
    if req.stream:
        return _streaming(gw, job, "chat", bool(req.stream_options and req.stream_options.include_usage))
    output, units = await run_in_threadpool(complete, gw, job)
    return ChatCompletion(id=f"chatcmpl-{job.job_id}", created=job.created, model=job.spec.id, usage=usage(output),
                          choices=[ChatChoice(message=AssistantMessage(content=output.text),
                                              finish_reason=output.finish_reason)], units_charged=units)


@router.post("/v1/completions", response_model=TextCompletion, responses=ERRORS)
async def completions(req: CompletionRequest, gw: Gateway = Depends(gateway),
                      key: ApiKey = Depends(limited_key)) -> Any:
    """A completion of one prompt as one network job; ``stream: true`` answers with server-sent events."""
    job = await run_in_threadpool(start, gw, key.id, req.model, req.prompt, req)
    if req.stream:
        return _streaming(gw, job, "text", bool(req.stream_options and req.stream_options.include_usage))
    output, units = await run_in_threadpool(complete, gw, job)
    return TextCompletion(id=f"cmpl-{job.job_id}", created=job.created, model=job.spec.id, usage=usage(output),
                          choices=[TextChoice(text=output.text, finish_reason=output.finish_reason)],
                          units_charged=units)
