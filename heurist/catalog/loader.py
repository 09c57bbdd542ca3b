"""Load the catalog file into typed ``ModelSpec``s; a bad entry fails here, naming the entry and field."""

from __future__ import annotations

import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from heurist.catalog.schema import ModelSpec
from heurist.errors import CatalogError, UnknownModelError

SHIPPED_CATALOG = "models.toml"


@dataclass(frozen=True)
class Catalog(Mapping[str, ModelSpec]):
    """The models the network routes, by id."""

    models: Mapping[str, ModelSpec]
    path: str

    def __getitem__(self, model_id: str) -> ModelSpec:
        try:
            return self.models[model_id]
        except KeyError:
            known = ", ".join(sorted(self.models))
            raise UnknownModelError(
                f"unknown model {model_id!r}: choose one of {known} (see `heurist routes`)"
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self.models)

    def __len__(self) -> int:
        return len(self.models)


def _describe(err: ValidationError) -> str:
    first = err.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "(entry)"
    return f"field {field!r}: {first['msg']}"


def parse_catalog(data: dict[str, Any], path: str) -> Catalog:
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
    return Catalog(models=models, path=path)


def load_catalog(path: Path | None = None) -> Catalog:
    """Read and validate a catalog TOML file (default: the one shipped in the package)."""
    if path is None:
        text = resources.files("heurist.catalog").joinpath(SHIPPED_CATALOG).read_text()
        where = f"heurist/catalog/{SHIPPED_CATALOG}"
    else:
        try:
            text = Path(path).read_text()
        except OSError as err:
            raise CatalogError(f"cannot read catalog {path}: {err.strerror}; check HEURIST_CATALOG_PATH") from None
        where = str(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise CatalogError(f"{where}: not valid TOML: {err}") from None
    return parse_catalog(data, where)
