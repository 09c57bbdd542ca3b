"""The seed's points formulas. 1 unit = one SD1.5 512x512 image at 20 steps = 1000 Mixtral tokens."""

from __future__ import annotations

from heurist.catalog.schema import ModelSpec
from heurist.jobs import ImageParams, TextParams

REFERENCE_PIXELS = 512 * 512
REFERENCE_STEPS = 20
TOKENS_PER_UNIT = 1000
MICRO = 1_000_000  # points are stored as integer micro-points: exact on every database


def image_work_units(params: ImageParams) -> float:
    return (params.width * params.height / REFERENCE_PIXELS) * (params.steps / REFERENCE_STEPS)


def text_work_units(input_tokens: int, output_tokens: int) -> float:
    return (input_tokens + output_tokens) / TOKENS_PER_UNIT


def job_points(spec: ModelSpec, params: ImageParams | TextParams, input_tokens: int = 0,
               output_tokens: int = 0) -> float:
    """Points a job earns: work units times the model's coefficient."""
    if isinstance(params, ImageParams):
        return image_work_units(params) * spec.coefficient
    return text_work_units(input_tokens, output_tokens) * spec.coefficient


def to_micro(points: float) -> int:
    return round(points * MICRO)


def from_micro(micro: int) -> float:
    return micro / MICRO
