"""What ``heurist doctor`` checks: devices and their tiers, torch, which catalog models fit and are intact,
the broker. Each check returns plain data; the CLI only renders it.

Devices are listed the way the miner will use them: each GPU (found without initialising CUDA, as the
multi-GPU supervisor does) planned by its nominal VRAM, else the CPU planned by its RAM.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from heurist.catalog import Catalog, ModelSpec
from heurist.catalog.schema import VramClass
from heurist.routing import servable
from heurist.settings import is_amqp
from workers.miner.device import cpu_name, system_ram_gb
from workers.miner.file_check import FileState, FileStatus, FileWork, check_files, locate
from workers.miner.gpus import discover_gpus


@dataclass(frozen=True)
class DeviceCheck:
    label: str  # "gpu0", "gpu1", or "cpu"
    kind: str  # "cuda" or "cpu"
    name: str
    memory_gb: float  # VRAM, or RAM for the CPU
    plan_gb: float  # what tiers are planned with
    tier: str | None  # the largest VRAM class it reaches; None below the smallest
    detail: str


@dataclass(frozen=True)
class TorchCheck:
    version: str | None
    cuda_available: bool
    cuda_version: str | None


@dataclass(frozen=True)
class ModelCheck:
    model: str
    tier: str
    fits_on: list[str]  # device labels
    why_not: str | None  # when it fits no device
    files: str  # a FileState value
    files_detail: str

    @property
    def servable(self) -> bool:
        return bool(self.fits_on) and self.files == FileState.VERIFIED


@dataclass(frozen=True)
class BrokerCheck:
    url: str  # password hidden
    reachable: bool | None  # None: not checked
    detail: str


@dataclass
class Report:
    devices: list[DeviceCheck]
    torch: TorchCheck
    models: list[ModelCheck]
    broker: BrokerCheck | None
    warnings: list[str] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        """What stops this machine from mining (the doctor exits non-zero on any)."""
        found = [f"model {m.model}: {m.files_detail}" for m in self.models if m.files == FileState.CORRUPT]
        if self.torch.version is None:
            found.append("torch is not installed: `pip install 'heurist[miner]'` (a miner needs it)")
        if any(d.kind == "cuda" for d in self.devices) and not self.torch.cuda_available:
            found.append(f"this machine has GPUs but torch {self.torch.version} cannot use CUDA: install a CUDA "
                         "build of torch (https://pytorch.org/get-started/locally/)")
        if not any(m.servable for m in self.models):
            found.append("no model this miner could serve: none both fits a device here and has verified files "
                         "(`heurist models build tiny-sd`, or download a model that fits)")
        if self.broker is not None and self.broker.reachable is False:
            found.append(f"broker {self.broker.url} unreachable: {self.broker.detail}")
        return found

    def to_json(self) -> dict[str, object]:
        return {"ok": not self.problems, "problems": self.problems, "warnings": self.warnings,
                "devices": [asdict(d) for d in self.devices], "torch": asdict(self.torch),
                "models": [{**asdict(m), "servable": m.servable} for m in self.models],
                "broker": asdict(self.broker) if self.broker else None}


def tier_of(plan_gb: float) -> str | None:
    """The largest VRAM class a device of ``plan_gb`` reaches."""
    reached = [tier for tier in VramClass if tier.gb <= plan_gb]
    return max(reached, key=lambda t: t.gb).value if reached else None


def check_devices() -> tuple[list[DeviceCheck], list[str]]:
    """Each GPU, else the CPU, as a miner started here would plan them; and discovery warnings."""
    found = discover_gpus()
    devices = [DeviceCheck(label=f"gpu{g.index}", kind="cuda", name=g.name, memory_gb=g.vram_gb,
                           plan_gb=g.nominal_vram_gb, tier=tier_of(g.nominal_vram_gb),
                           detail=f"{g.memory_mib} MiB via {found.source}" + (f", {g.uuid}" if g.uuid else ""))
               for g in found.gpus]
    if not devices:
        ram = system_ram_gb()
        devices.append(DeviceCheck(label="cpu", kind="cpu", name=cpu_name(), memory_gb=ram, plan_gb=ram,
                                   tier=tier_of(ram), detail=f"{os.cpu_count()} cores, {ram:g} GB RAM (no GPU found)"))
    return devices, list(found.warnings)


def check_torch() -> TorchCheck:
    """torch's version and whether it can use CUDA (imported here, lazily: only the doctor needs it)."""
    try:
        import torch
    except ImportError:
        return TorchCheck(version=None, cuda_available=False, cuda_version=None)
    return TorchCheck(version=str(torch.__version__), cuda_available=bool(torch.cuda.is_available()),
                      cuda_version=torch.version.cuda)


def _fit(spec: ModelSpec, catalog: Catalog, devices: Sequence[DeviceCheck]) -> tuple[list[str], str | None]:
    fits = [d.label for d in devices if servable(catalog, [spec.id], d.plan_gb)[0]]
    if fits:
        return fits, None
    biggest = max(devices, key=lambda d: d.plan_gb)
    return [], servable(catalog, [spec.id], biggest.plan_gb)[1][0]


Hashing = Callable[[ModelSpec, FileWork], FileStatus]


def check_models(catalog: Catalog, model_ids: Sequence[str], devices: Sequence[DeviceCheck], models_dir: Path,
                 hashing: Hashing | None = None) -> list[ModelCheck]:
    """Per model: which devices it fits, and the state of its files (``hashing`` may show progress)."""
    hash_files = hashing or check_files
    rows = []
    for model_id in model_ids:
        spec = catalog[model_id]
        fits, why_not = _fit(spec, catalog, devices)
        located = locate(spec, models_dir)
        status = located if isinstance(located, FileStatus) else hash_files(spec, located)
        rows.append(ModelCheck(model=model_id, tier=spec.vram.value, fits_on=fits, why_not=why_not,
                               files=status.state.value, files_detail=status.detail))
    return rows


def check_broker(url: str, shown: str, timeout_s: float = 3.0) -> BrokerCheck:
    """Can this machine open a connection to the broker within ``timeout_s``? AMQP URLs only.
    ``shown`` is the URL as it may be printed (password hidden)."""
    if not is_amqp(url):
        return BrokerCheck(shown, None, "not a network broker (embedded SQLite): nothing to reach")
    from kombu import Connection

    try:
        with Connection(url, connect_timeout=timeout_s) as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=timeout_s)
    except Exception as err:  # kombu raises transport-specific errors (socket, auth, timeout)
        return BrokerCheck(shown, False, f"{type(err).__name__}: {err}")
    return BrokerCheck(shown, True, "connected")
