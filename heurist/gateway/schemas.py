"""Request and response bodies of the REST API; their constraints are the OpenAPI schema's."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_SEED = 2**32 - 1
MAX_IMAGES = 8
MAX_TIMEOUT_S = 3600.0


class ImageGenerationRequest(BaseModel):
    """POST /v1/images/generations. Unset sizes, steps and guidance take the model's defaults."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, json_schema_extra={"examples": [
        {"prompt": "a lighthouse at dusk", "model": "tiny-sd", "width": 64, "height": 64, "steps": 8, "n": 1}]})

    prompt: str = Field(..., min_length=1, max_length=4000, description="What to draw.")
    negative_prompt: str = Field("", max_length=4000, description="What to keep out of the image.")
    model: str = Field("sd15", min_length=1, max_length=64, description="A catalog image model id.")
    width: int | None = Field(None, ge=8, le=4096, description="Pixels; a multiple of 8 within the model's limits.")
    height: int | None = Field(None, ge=8, le=4096, description="Pixels; a multiple of 8 within the model's limits.")
    steps: int | None = Field(None, ge=1, le=500, description="Denoising steps.")
    guidance: float | None = Field(None, ge=0, le=100, description="Classifier-free guidance scale.")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="Image i uses seed + i; unset: random.")
    n: int = Field(1, ge=1, le=MAX_IMAGES, description="How many images (one job each).")
    response_format: Literal["url", "b64_json"] = Field("url", description="Presigned GET URL or base64 PNG.")
    timeout_s: float | None = Field(None, gt=0, le=MAX_TIMEOUT_S,
                                    description="How long to wait for the jobs; past it: 504 naming the job ids.")


class ImageData(BaseModel):
    url: str | None = Field(None, description="Presigned GET URL of the PNG (response_format=url).")
    b64_json: str | None = Field(None, description="The PNG, base64 (response_format=b64_json).")
    job_id: str
    seed: int


class ImageGenerationResponse(BaseModel):
    created: int = Field(..., description="Unix seconds.")
    data: list[ImageData]
    units_charged: float = Field(..., description="Standard Credit Units taken from the key for these images.")
    model: str


class JobStatus(BaseModel):
    """A job as its owner sees it: no points, no miner identity."""

    id: str
    model: str
    kind: str
    state: Literal["queued", "completed", "late", "rejected", "failed"]
    created_at: float
    finished_at: float | None = None
    url: str | None = Field(None, description="Presigned GET URL of the output, once the job has one (never "
                            "for an output that failed its audit).")
    error: str | None = None
    audit: Literal["failed"] | None = Field(None, description="'failed': an auditor replayed the job and the "
                                            "output did not match; it is no longer served and the job is refunded.")
    refunded: bool = Field(False, description="The job's charge was given back (a failed job or a failed audit).")


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail
