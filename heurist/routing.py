"""Which queue a job travels on, and which queues a miner consumes."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from heurist.catalog import Catalog, ModelSpec


@dataclass(frozen=True)
class Route:
    model_id: str
    family: str
    vram: str
    vram_gb: int
    queue: str
    coefficient: float


def route_table(catalog: Catalog) -> list[Route]:
    """Every model's queue, smallest tier first."""
    rows = [
        Route(m.id, m.family.value, m.vram.value, m.vram.gb, m.queue, m.coefficient) for m in catalog.values()
    ]
    return sorted(rows, key=lambda r: (r.vram_gb, r.model_id))


def queue_for(spec: ModelSpec) -> str:
    return spec.queue


def tier_of(specs: Iterable[ModelSpec]) -> str | None:
    """The largest VRAM class among these models: a miner's tier (None for no models)."""
    largest = max((spec.vram for spec in specs), key=lambda v: v.gb, default=None)
    return None if largest is None else largest.value


def miner_tier(catalog: Mapping[str, ModelSpec], model_ids: Iterable[str]) -> str | None:
    """A registered miner's tier from its model ids; ids the catalog no longer lists are ignored."""
    return tier_of(catalog[m] for m in model_ids if m in catalog)


def servable(catalog: Catalog, model_ids: Iterable[str], vram_gb: float) -> tuple[list[ModelSpec], list[str]]:
    """Split a miner's wanted models into those its VRAM fits and reasons for the rest."""
    fits: list[ModelSpec] = []
    refused: list[str] = []
    for model_id in model_ids:
        spec = catalog[model_id]
        if spec.vram.gb <= vram_gb:
            fits.append(spec)
        else:
            refused.append(f"{model_id} needs {spec.vram.value} ({spec.vram.gb} GB); this device has {vram_gb:g} GB")
    return fits, refused
