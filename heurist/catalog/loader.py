"""Load the catalog file into typed ``ModelSpec``s; a bad entry fails here, naming the entry and field.

A model whose deadline at its maximum limits exceeds ``Settings.max_job_deadline_s`` (1,500 s) is refused too:
a miner holds a job unacknowledged until it ends, and RabbitMQ closes the channel of a consumer past its
``consumer_timeout`` (30 min by default), after which the worker exits (celery/celery#6760). The shipped
catalog once gave mixtral-8x7b 2,196 s and smollm2-135m 3,307 s at their limits; each now has a ``max_s`` cap.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from heurist.catalog.schema import JobKind, ModelSpec, Units
from heurist.errors import CatalogError, UnknownModelError
from heurist.settings import get_settings

SHIPPED_CATALOG = "models.toml"
UTF8_MAX_BYTES = 4  # a prompt's deadline counts its UTF-8 bytes (heurist.client._work_units): at most 4 a character


@dataclass(frozen=True)
class Catalog(Mapping[str, ModelSpec]):
    """The models the network routes, by id, and the models that define the standard unit."""

    models: Mapping[str, ModelSpec]
    path: str
    units: Units = field(default_factory=Units)

    def __getitem__(self, model_id: str) -> ModelSpec:
        try:
            return self.models[model_id]
        except KeyError:
            known = ", ".join(sorted(self.models))
            raise UnknownModelError(
                f"unknown model {model_id!r}: choose one of {known} (see `heurist routes`)"
            ) from None

    def __contains__(self, model_id: object) -> bool:
        """Without this, Mapping's ``in`` would call ``__getitem__``, whose error is not a KeyError."""
        return model_id in self.models

    def __iter__(self) -> Iterator[str]:
        return iter(self.models)

    def __len__(self) -> int:
        return len(self.models)


def _describe(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "(entry)"
    return f"field {where!r}: {first['msg']}"


def _parse_units(data: dict[str, Any], path: str, models: Mapping[str, ModelSpec]) -> Units:
    """The ``[units]`` table; a reference it names must be a catalog model of its kind (defaults may be absent)."""
    given = data.get("units", {})
    if not isinstance(given, dict):
        raise CatalogError(f"{path}: [units] must be a table")
    try:
        units = Units.model_validate(given)
    except ValidationError as err:
        raise CatalogError(f"{path}: [units], {_describe(err)}") from None
    for key, kind in (("image_reference", JobKind.IMAGE), ("text_reference", JobKind.TEXT)):
        model_id = getattr(units, key)
        spec = models.get(model_id)
        if spec is None and key not in given:
            continue
        if spec is None or spec.kind is not kind:
            raise CatalogError(
                f"{path}: [units] {key} = {model_id!r} must name one of this catalog's {kind.value} models"
            )
    return units


def deadline_at_limits(spec: ModelSpec) -> tuple[float, str]:
    """The longest deadline a job of ``spec`` can get (its maximum limits), and what that job is."""
    from heurist.points import REFERENCE_PIXELS, REFERENCE_STEPS, TOKENS_PER_UNIT  # it imports this package

    if spec.image is not None:
        lim = spec.image
        units = lim.max_width * lim.max_height / REFERENCE_PIXELS * lim.max_steps / REFERENCE_STEPS
        job = f"{lim.max_width}x{lim.max_height}, {lim.max_steps} steps"
    else:
        assert spec.text is not None  # ModelSpec requires one table or the other
        units = (UTF8_MAX_BYTES * spec.text.max_prompt_chars + spec.text.max_tokens) / TOKENS_PER_UNIT
        job = f"a {spec.text.max_prompt_chars}-character prompt, {spec.text.max_tokens} tokens"
    return spec.deadline.seconds(units), job


def check_deadlines(models: Mapping[str, ModelSpec], path: str, max_deadline_s: float) -> None:
    """Refuse a model whose deadline at its maximum limits exceeds ``max_deadline_s``, naming the fix."""
    for spec in models.values():
        seconds, job = deadline_at_limits(spec)
        if seconds > max_deadline_s:
            raise CatalogError(
                f"{path}: model {spec.id!r} gives its largest job ({job}) a deadline of {seconds:,.0f} s, above "
                f"HEURIST_MAX_JOB_DEADLINE_S = {max_deadline_s:,.0f} s, which must stay below RabbitMQ's "
                f"consumer_timeout: cap it with `deadline = {{ ..., max_s = {max_deadline_s:g} }}` (or less), "
                "lower its per_unit_s or its limits, or raise both consumer_timeout and the setting "
                "(docs/operators.md)")


def parse_catalog(data: dict[str, Any], path: str, max_deadline_s: float | None = None) -> Catalog:
    """A validated catalog; ``max_deadline_s`` defaults to the process settings' ``max_job_deadline_s``."""
    entries = data.get("models")
    if not isinstance(entries, dict) or not entries:
        raise CatalogError(f"{path}: no [models.<id>] tables found")
    models: dict[str, ModelSpec] = {}
    for model_id, entry in entries.items():
        if not isinstance(entry, dict):
            raise CatalogError(f"{path}: entry {model_id!r} must be a table")
        try:
            models[model_id] = ModelSpec.model_validate({"id": model_id, **entry})
        except ValidationError as err:
            raise CatalogError(f"{path}: entry {model_id!r}, {_describe(err)}") from None
    limit = get_settings().max_job_deadline_s if max_deadline_s is None else max_deadline_s
    check_deadlines(models, path, limit)
    return Catalog(models=models, path=path, units=_parse_units(data, path, models))


def read_catalog_text(path: Path | None = None) -> tuple[str, str]:
    """A catalog file's text and how to name it in messages (default: the one shipped in the package)."""
    if path is None:
        text = resources.files("heurist.catalog").joinpath(SHIPPED_CATALOG).read_text()
        return text, f"heurist/catalog/{SHIPPED_CATALOG}"
    try:
        return Path(path).read_text(), str(path)
    except OSError as err:
        raise CatalogError(f"cannot read catalog {path}: {err.strerror}; check HEURIST_CATALOG_PATH") from None


def load_catalog(path: Path | None = None, *, max_deadline_s: float | None = None) -> Catalog:
    """Read and validate a catalog TOML file (default: the one shipped in the package); ``max_deadline_s``:
    the longest deadline allowed (default: the process settings' ``max_job_deadline_s``)."""
    text, where = read_catalog_text(path)
    return parse_catalog_text(text, where, max_deadline_s=max_deadline_s)


def parse_catalog_text(text: str, where: str, *, max_deadline_s: float | None = None) -> Catalog:
    """Parse and validate catalog TOML text; ``where`` names it in error messages."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise CatalogError(f"{where}: not valid TOML: {err}") from None
    return parse_catalog(data, where, max_deadline_s)
