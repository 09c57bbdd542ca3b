"""Write benchmark results into a catalog TOML file, keeping its comments, order and formatting (tomlkit).

Only the measured models' ``benchmarks`` (one entry per device string: a new run on the same device
replaces it) and, when measured, ``coefficient`` and ``coefficient_source`` change. The result is validated
as a catalog before it is written, atomically, so a miner never reads half a file. The installed package's
own catalog is never written: results go to a copy that ``HEURIST_CATALOG_PATH`` points at.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.items import AoT, Table

import heurist
from heurist.catalog.loader import parse_catalog_text
from heurist.catalog.schema import Benchmark
from heurist.errors import CatalogError, ConfigError


@dataclass(frozen=True)
class CatalogUpdate:
    """One model's edit: its benchmark entry, and a new coefficient only when the run measured one."""

    model_id: str
    benchmark: Benchmark
    coefficient: float | None = None
    coefficient_source: str | None = None


def _benchmark_table(benchmark: Benchmark) -> Table:
    table = tomlkit.table()
    table.update(benchmark.model_dump(mode="json", exclude_none=True))  # TOML has no null: None is left out
    table.add(tomlkit.nl())
    return table


def _benchmarks_of(model: Table) -> AoT:
    """The model's ``[[models.<id>.benchmarks]]`` array, created (after a blank line) if it has none."""
    existing: Any = model.get("benchmarks")
    if isinstance(existing, AoT):
        return existing
    entries = [Benchmark.model_validate(e) for e in (existing or [])]  # an inline array, if someone wrote one
    if existing is not None:
        del model["benchmarks"]
    if not model.as_string().endswith("\n\n"):
        model.add(tomlkit.nl())
    model.append("benchmarks", tomlkit.aot())
    aot: AoT = model["benchmarks"]  # type: ignore[assignment]
    for entry in entries:
        aot.append(_benchmark_table(entry))
    return aot


def _record(aot: AoT, benchmark: Benchmark) -> None:
    """Replace the entry of the same device string, else append one."""
    for index, entry in enumerate(aot):
        if entry.get("device") == benchmark.device:
            aot[index] = _benchmark_table(benchmark)
            return
    aot.append(_benchmark_table(benchmark))


def _model_table(doc: tomlkit.TOMLDocument, model_id: str, where: str) -> Table:
    models: Any = doc.get("models")
    model = models.get(model_id) if models is not None else None
    if not isinstance(model, Table):
        raise CatalogError(f"{where}: has no [models.{model_id}] table to record its benchmark in")
    return model


def apply_updates(text: str, updates: Sequence[CatalogUpdate], where: str) -> str:
    """``text`` with the updates applied; raises ``CatalogError`` if the result is not a valid catalog."""
    doc = tomlkit.parse(text)
    for update in updates:
        model = _model_table(doc, update.model_id, where)
        if update.coefficient is not None:
            model["coefficient"] = update.coefficient
            model["coefficient_source"] = update.coefficient_source or "heurist bench models"
        _record(_benchmarks_of(model), update.benchmark)
    result = tomlkit.dumps(doc).rstrip("\n") + "\n"
    parse_catalog_text(result, where)
    return result


def _inside_package(path: Path) -> bool:
    package = Path(heurist.__file__).resolve().parent
    return path.resolve().is_relative_to(package)


def check_writable(path: Path) -> None:
    """Fail before a long benchmark if ``path`` cannot take the catalog (tries creating a file beside it)."""
    if _inside_package(path):
        raise ConfigError(
            f"{path} is inside the installed heurist package: write the catalog elsewhere with --output "
            "and point HEURIST_CATALOG_PATH at it"
        )
    if path.is_dir():
        raise ConfigError(f"cannot write the catalog to {path}: it is a directory; give a file path with --output")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".catalog.", dir=path.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ConfigError(
            f"cannot write the catalog to {path}: {err.strerror or err}; choose another --output"
        ) from None


def write_catalog(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically (a reader sees the old file or the new one, never half)."""
    check_writable(path)
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644  # mkstemp's 0600 would hide it from miners
    fd, tmp = tempfile.mkstemp(prefix=".catalog.", suffix=".toml", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise ConfigError(f"cannot write the catalog to {path}: {err.strerror or err}") from None
