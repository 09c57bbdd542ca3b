"""`heurist bench models`, the torch-free half: turn timed reference jobs into coefficients and benchmark entries.

A model's coefficient is its seconds per standard unit over the family reference's (the catalog's ``[units]``
model of its kind: SD1.5 for images, Mixtral-8x7B for text), both timed in the same run on the same device.
Without the reference on the machine nothing is measured against it: the catalog's stated coefficient stays
and the benchmark entry says so. A CPU run never replaces a coefficient a CUDA run measured (DESIGN: they
come from a GPU benchmark). The timing itself runs on the miner side (``workers.bench.models``).
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from heurist.catalog import Catalog, ModelSpec
from heurist.catalog.loader import parse_catalog_text, read_catalog_text
from heurist.catalog.schema import Benchmark
from heurist.catalog.writer import CatalogUpdate
from heurist.settings import Settings

SIGNIFICANT = 4  # digits kept in the catalog: run-to-run noise is larger than that


def catalog_target(settings: Settings, output: Path | None) -> Path:
    """Where results go: ``--output``, else the catalog in use (HEURIST_CATALOG_PATH), else data_dir/catalog.toml."""
    return Path(output or settings.catalog_path or settings.data_dir / "catalog.toml")


def base_catalog(settings: Settings, target: Path) -> tuple[str, Catalog]:
    """The catalog the run measures and edits: ``target`` if it exists (updated in place, so runs on several
    devices accumulate), else a copy of the catalog in use (the shipped one unless HEURIST_CATALOG_PATH)."""
    text, where = read_catalog_text(target if target.is_file() else settings.catalog_path)
    return text, parse_catalog_text(text, where)


def significant(value: float, digits: int = SIGNIFICANT) -> float:
    """``value`` rounded to ``digits`` significant digits (1.0 stays exactly 1.0)."""
    return float(f"{value:.{digits}g}")


@dataclass(frozen=True)
class Timing:
    """One model's reference job, timed ``len(runs_s)`` times after a warm-up on this device."""

    model_id: str
    reference_job: str
    units: float
    runs_s: tuple[float, ...]

    @property
    def seconds(self) -> float:
        return statistics.median(self.runs_s)

    @property
    def seconds_per_unit(self) -> float:
        return self.seconds / self.units

    @property
    def spread(self) -> float:
        """Slowest run over fastest: far above 1, something else was using the device."""
        return max(self.runs_s) / min(self.runs_s)


@dataclass(frozen=True)
class ModelResult:
    """What the run concluded for one model: its benchmark entry and the coefficient to keep or set."""

    timing: Timing
    benchmark: Benchmark
    previous_coefficient: float
    coefficient: float
    coefficient_measured: bool
    coefficient_source: str

    def update(self) -> CatalogUpdate:
        """The catalog edit: always the benchmark entry; the coefficient only when this run measured it."""
        if not self.coefficient_measured:
            return CatalogUpdate(self.timing.model_id, self.benchmark)
        return CatalogUpdate(self.timing.model_id, self.benchmark, self.coefficient, self.coefficient_source)


@dataclass(frozen=True)
class ModelsBench:
    """One `heurist bench models` run: the device, the date and each model's result."""

    device: str
    device_kind: str
    date: str
    repeat: int
    results: list[ModelResult]


def _measured_on_cuda(spec: ModelSpec) -> Benchmark | None:
    """A CUDA benchmark of ``spec`` that measured its coefficient against the family reference, if any."""
    return next((b for b in spec.benchmarks
                 if b.device_kind == "cuda" and b.family_reference_seconds_per_unit is not None), None)


def _kept_because(spec: ModelSpec, reference: str, measured: bool, device_kind: str) -> str | None:
    """Why this run must keep the catalog's coefficient (None: it may set it)."""
    stated = f"kept the catalog's stated coefficient {spec.coefficient:g}"
    if not measured:
        return f"family reference {reference} not on this machine; {stated}"
    gpu = _measured_on_cuda(spec) if device_kind != "cuda" else None
    if gpu is not None:
        return f"a {device_kind} run does not replace the coefficient measured on {gpu.device} ({gpu.date}); {stated}"
    return None


def model_result(spec: ModelSpec, timing: Timing, reference: str, reference_timing: Timing | None,
                 run: ModelsBench) -> ModelResult:
    """The benchmark entry and coefficient of one timed model, given the family reference's timing (if any)."""
    ref_spu = reference_timing.seconds_per_unit if reference_timing is not None else None
    kept = _kept_because(spec, reference, ref_spu is not None, run.device_kind)
    spu = timing.seconds_per_unit
    if ref_spu is None or kept is not None:
        coefficient, source, note = spec.coefficient, spec.coefficient_source, kept or ""
    else:
        coefficient = significant(spu / ref_spu)
        source = f"heurist bench models on {run.device}, {run.date}"
        note = f"measured against {reference} in the same run: {spu:.4g} / {ref_spu:.4g} s per unit"
    benchmark = Benchmark(
        device=run.device, device_kind=run.device_kind, date=run.date,  # type: ignore[arg-type]
        seconds_per_unit=significant(spu), reference_job=timing.reference_job, family_reference=reference,
        family_reference_seconds_per_unit=None if ref_spu is None else significant(ref_spu), note=note,
    )
    return ModelResult(timing=timing, benchmark=benchmark, previous_coefficient=spec.coefficient,
                       coefficient=coefficient, coefficient_measured=kept is None,
                       coefficient_source=source)


def conclude(catalog: Catalog, timings: Mapping[str, Timing], device: str, device_kind: str, date: str,
             repeat: int) -> ModelsBench:
    """Every timed model's result, each against the family reference timed in the same run."""
    run = ModelsBench(device=device, device_kind=device_kind, date=date, repeat=repeat, results=[])
    results = []
    for model_id, timing in timings.items():
        spec = catalog[model_id]
        reference = catalog.units.reference_for(spec.kind)
        results.append(model_result(spec, timing, reference, timings.get(reference), run))
    return replace(run, results=results)


def as_dict(run: ModelsBench) -> dict[str, Any]:
    """The run as one JSON-ready object, models by id."""
    models: dict[str, Any] = {}
    for result in run.results:
        bench = result.benchmark
        models[result.timing.model_id] = {
            "seconds_per_unit": bench.seconds_per_unit,
            "seconds": result.timing.seconds,
            "runs_s": list(result.timing.runs_s),
            "spread": round(result.timing.spread, 3),
            "units": result.timing.units,
            "reference_job": bench.reference_job,
            "family_reference": bench.family_reference,
            "family_reference_seconds_per_unit": bench.family_reference_seconds_per_unit,
            "coefficient": result.coefficient,
            "previous_coefficient": result.previous_coefficient,
            "coefficient_measured": result.coefficient_measured,
            "coefficient_source": result.coefficient_source,
            "note": bench.note,
        }
    return {"device": run.device, "device_kind": run.device_kind, "date": run.date, "repeat": run.repeat,
            "models": models}
