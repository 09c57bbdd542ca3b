"""Check a request against its model's limits before anything is recorded or enqueued."""

from __future__ import annotations

from typing import TypeVar

from pydantic import ValidationError

from heurist.catalog.schema import ImageLimits, JobKind, ModelSpec, TextLimits
from heurist.errors import InvalidJobError
from heurist.jobs import ImageParams, TextParams


def _require_kind(spec: ModelSpec, kind: JobKind) -> None:
    if spec.kind is not kind:
        raise InvalidJobError(
            f"model {spec.id!r} makes {spec.kind.value}s, not {kind.value}s: "
            f"use `heurist submit {spec.kind.value}` or pick a {kind.value} model"
        )


def _check_range(field: str, value: float, low: float, high: float, model: str) -> None:
    if not low <= value <= high:
        raise InvalidJobError(f"{field}={value:g} is outside {low:g}..{high:g} for model {model!r}")


def _check_side(field: str, value: int, low: int, high: int, model: str) -> None:
    _check_range(field, value, low, high, model)
    if value % 8:
        raise InvalidJobError(f"{field}={value} must be a multiple of 8 (e.g. {value - value % 8}) for {model!r}")


def _image_limits(spec: ModelSpec) -> ImageLimits:
    assert spec.image is not None  # guaranteed by ModelSpec validation for image families
    return spec.image


def _text_limits(spec: ModelSpec) -> TextLimits:
    assert spec.text is not None
    return spec.text


def image_params(spec: ModelSpec, prompt: str, *, negative_prompt: str = "", width: int | None = None,
                 height: int | None = None, steps: int | None = None, guidance: float | None = None,
                 seed: int = 0) -> ImageParams:
    """An image job's parameters with the model's defaults filled in; raises if any limit is broken."""
    _require_kind(spec, JobKind.IMAGE)
    lim = _image_limits(spec)
    width = lim.default_width if width is None else width
    height = lim.default_height if height is None else height
    steps = lim.default_steps if steps is None else steps
    guidance = lim.default_guidance if guidance is None else guidance
    _check_side("width", width, lim.min_size, lim.max_width, spec.id)
    _check_side("height", height, lim.min_size, lim.max_height, spec.id)
    _check_range("steps", steps, lim.min_steps, lim.max_steps, spec.id)
    _check_range("guidance", guidance, lim.min_guidance, lim.max_guidance, spec.id)
    return _build(ImageParams, prompt=prompt, negative_prompt=negative_prompt, width=width, height=height,
                  steps=steps, guidance=guidance, seed=seed)


def text_params(spec: ModelSpec, prompt: str, *, max_tokens: int | None = None, temperature: float = 0.0,
                seed: int = 0) -> TextParams:
    """A text job's parameters with defaults filled in; raises if any limit is broken."""
    _require_kind(spec, JobKind.TEXT)
    lim = _text_limits(spec)
    max_tokens = lim.default_max_tokens if max_tokens is None else max_tokens
    _check_range("max_tokens", max_tokens, 1, lim.max_tokens, spec.id)
    if len(prompt) > lim.max_prompt_chars:
        raise InvalidJobError(
            f"prompt is {len(prompt)} characters; model {spec.id!r} takes at most {lim.max_prompt_chars}"
        )
    return _build(TextParams, prompt=prompt, max_tokens=max_tokens, temperature=temperature, seed=seed)


P = TypeVar("P", ImageParams, TextParams)


def _build(model: type[P], **values: object) -> P:
    try:
        return model.model_validate(values)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise InvalidJobError(f"{field}: {first['msg']}") from None
