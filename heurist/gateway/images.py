"""POST /v1/images/generations: n image jobs, paid up front, answered with URLs or base64 PNGs."""

from __future__ import annotations

import base64
import time
import uuid
from typing import TYPE_CHECKING

from fastapi import APIRouter, Depends
from starlette.concurrency import run_in_threadpool

from heurist.catalog import ModelSpec
from heurist.credits.pricing import price_units
from heurist.credits.tables import ApiKey
from heurist.errors import public_failure
from heurist.gateway.charging import refund_all, reserve_all, wait_all
from heurist.gateway.deps import ERRORS, Gateway, gateway, limited_key
from heurist.gateway.errors import ApiError
from heurist.gateway.schemas import MAX_SEED, ImageData, ImageGenerationRequest, ImageGenerationResponse
from heurist.jobs import ImageParams
from heurist.submission import image_params

if TYPE_CHECKING:
    from heurist.ledger.reader import JobView

router = APIRouter(tags=["images"])


def _params(spec: ModelSpec, req: ImageGenerationRequest) -> list[ImageParams]:
    """One validated parameter set per image; raises (422 naming the field) before anything is charged."""
    first = uuid.uuid4().int % (MAX_SEED + 1) if req.seed is None else req.seed
    return [image_params(spec, req.prompt, negative_prompt=req.negative_prompt, width=req.width, height=req.height,
                         steps=req.steps, guidance=req.guidance, seed=(first + i) % (MAX_SEED + 1))
            for i in range(req.n)]


def _send(gw: Gateway, spec: ModelSpec, params: list[ImageParams], job_ids: list[str]) -> None:
    """Submit each reserved job; a job that cannot be sent, and those after it, are refunded."""
    for i, (p, job_id) in enumerate(zip(params, job_ids, strict=True)):
        try:
            gw.client.submit_params(spec, p, job_id=job_id)
        except BaseException:
            refund_all(gw.credits, job_ids[i:])
            raise


def _item(gw: Gateway, view: JobView, seed: int, response_format: str) -> ImageData:
    result = gw.client.to_result(view)
    if response_format == "b64_json":
        data = gw.client.fetch_output(result)  # checks the sha256 the ledger verified
        return ImageData(b64_json=base64.b64encode(data).decode(), job_id=view.job_id, seed=seed)
    return ImageData(url=result.url, job_id=view.job_id, seed=seed)


def generate(gw: Gateway, key_id: int, req: ImageGenerationRequest) -> ImageGenerationResponse:
    """Validate, price, reserve all, send, wait; failed jobs are refunded and left out of ``data``."""
    timeout = gw.settings.gateway_timeout_s if req.timeout_s is None else req.timeout_s
    if timeout > gw.settings.gateway_max_timeout_s:
        raise ApiError(422, f"timeout_s: at most {gw.settings.gateway_max_timeout_s:g}", param="timeout_s")
    spec = gw.client.catalog[req.model]
    params = _params(spec, req)
    prices = [price_units(spec, p) for p in params]
    job_ids = [str(uuid.uuid4()) for _ in params]
    reserve_all(gw.credits, key_id, job_ids, prices)
    _send(gw, spec, params, job_ids)
    views = wait_all(gw.client, job_ids, timeout)
    failed = [v.job_id for v in views if not v.state.has_output]
    refund_all(gw.credits, failed)
    if len(failed) == len(views):
        first = public_failure(views[0].job_id, views[0].state, views[0].error)
        raise ApiError(502, f"every job failed ({first}); refunded",
                       type_="job_failed", code="job_failed", job_ids=failed)
    data = [_item(gw, v, p.seed, req.response_format) for v, p in zip(views, params, strict=True)
            if v.state.has_output]
    charged = sum(price for v, price in zip(views, prices, strict=True) if v.state.has_output)
    return ImageGenerationResponse(created=int(time.time()), data=data, units_charged=charged, model=spec.id)


@router.post("/v1/images/generations", response_model=ImageGenerationResponse, responses=ERRORS)
async def create_images(req: ImageGenerationRequest, gw: Gateway = Depends(gateway),
                        key: ApiKey = Depends(limited_key)) -> ImageGenerationResponse:
    """Generate images as network jobs. Charged before sending (402 if the key cannot pay, nothing sent);
    failed jobs are refunded; a timeout answers 504 with the job ids while the jobs keep running."""
    return await run_in_threadpool(generate, gw, key.id, req)
