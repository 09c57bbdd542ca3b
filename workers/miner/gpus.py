"""Find this machine's GPUs without initialising CUDA in the calling process.

A supervisor that starts one miner per GPU must not touch CUDA itself: a process that has initialised CUDA
cannot safely fork, and would hold a context (hundreds of MB) on every GPU. So GPUs are listed by
``nvidia-smi`` when it is installed, else by torch in a short-lived subprocess, else not at all.

Indices follow the PCI bus order of ``nvidia-smi``; children are pinned by UUID when known (and with
``CUDA_DEVICE_ORDER=PCI_BUS_ID``), because CUDA's default order ("fastest first") can differ from it on a
box with mixed GPUs.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from heurist.errors import ConfigError
from workers.miner.device import nominal_vram_gb

log = logging.getLogger(__name__)

NVIDIA_SMI_QUERY = ["--query-gpu=index,name,memory.total,uuid", "--format=csv,noheader,nounits"]
MIB_PER_GIB = 1024

# Runs in a throwaway interpreter: CUDA is initialised there, never in the caller.
_TORCH_PROBE = """
import json, torch
gpus = []
if torch.cuda.is_available():
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        uuid = getattr(p, "uuid", None)
        gpus.append({"index": i, "name": p.name, "memory_mib": p.total_memory // 2**20,
                     "uuid": f"GPU-{uuid}" if uuid is not None else None})
print(json.dumps(gpus))
"""


@dataclass(frozen=True)
class Gpu:
    """One GPU as the driver lists it: what a per-GPU miner is pinned to and plans for."""

    index: int
    name: str
    memory_mib: int
    uuid: str | None = None

    @property
    def vram_gb(self) -> float:
        """Memory in GiB to one decimal, as ``workers.miner.device`` reports a CUDA device."""
        return round(self.memory_mib / MIB_PER_GIB, 1)

    @property
    def nominal_vram_gb(self) -> int:
        """Memory in whole GiB, what this GPU's worker plans tiers with (``workers.miner.device.nominal_vram_gb``)."""
        return nominal_vram_gb(self.memory_mib / MIB_PER_GIB)

    @property
    def visible_id(self) -> str:
        """What ``CUDA_VISIBLE_DEVICES`` should name: the UUID (order-proof), else the PCI-order index."""
        return self.uuid or str(self.index)


@dataclass(frozen=True)
class GpuDiscovery:
    """The GPUs found, which tool found them, and anything odd on the way (printed, never fatal)."""

    gpus: list[Gpu]
    source: str  # "nvidia-smi", "torch", "inventory file" or "none"
    warnings: list[str]


def parse_nvidia_smi(text: str) -> tuple[list[Gpu], list[str]]:
    """GPUs from ``nvidia-smi --query-gpu=index,name,memory.total,uuid --format=csv,noheader,nounits``.

    A line that does not parse is skipped with a warning naming it, so one odd GPU does not hide the
    others. Returns the GPUs in index order and the warnings.
    """
    gpus: list[Gpu] = []
    warnings: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            gpus.append(_parse_line(line))
        except ValueError as err:
            warnings.append(f"nvidia-smi line {number} skipped ({err}): {line.strip()!r}")
    seen: set[int] = set()
    unique: list[Gpu] = []
    for gpu in sorted(gpus, key=lambda g: g.index):
        if gpu.index in seen:
            warnings.append(f"nvidia-smi lists GPU index {gpu.index} twice; kept the first")
            continue
        seen.add(gpu.index)
        unique.append(gpu)
    return unique, warnings


def _parse_line(line: str) -> Gpu:
    parts = [part.strip() for part in line.split(",")]  # nvidia-smi GPU names never contain commas
    if len(parts) != 4:
        raise ValueError(f"expected 4 comma-separated fields (index, name, memory.total, uuid), got {len(parts)}")
    index_s, name, memory_s, uuid_s = parts
    if not index_s.isdigit():
        raise ValueError(f"index {index_s!r} is not a number")
    if not name:
        raise ValueError("empty name")
    try:
        memory_mib = int(float(memory_s.removesuffix("MiB").strip()))
    except ValueError:
        raise ValueError(f"memory.total {memory_s!r} is not a number of MiB") from None
    if memory_mib <= 0:
        raise ValueError(f"memory.total {memory_s!r} is not positive")
    uuid = uuid_s if uuid_s.startswith(("GPU-", "MIG-")) else None  # "[N/A]" on some drivers
    return Gpu(index=int(index_s), name=name, memory_mib=memory_mib, uuid=uuid)


def _nvidia_smi(executable: str, timeout_s: float) -> GpuDiscovery | None:
    """The GPUs nvidia-smi lists, or None when it fails (driver not loaded, timeout)."""
    try:
        done = subprocess.run([executable, *NVIDIA_SMI_QUERY], capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as err:
        log.warning("nvidia-smi failed (%s); asking torch instead", err)
        return None
    if done.returncode != 0:
        log.warning("nvidia-smi exited %s (%s); asking torch instead", done.returncode, done.stderr.strip()[:200])
        return None
    gpus, warnings = parse_nvidia_smi(done.stdout)
    return GpuDiscovery(gpus, "nvidia-smi", warnings)


def probe_with_torch(timeout_s: float = 120.0, python: str = sys.executable) -> GpuDiscovery:
    """Ask torch in a subprocess (PCI bus order), so this process never initialises CUDA."""
    env = {**os.environ, "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    try:
        done = subprocess.run([python, "-c", _TORCH_PROBE], capture_output=True, text=True, timeout=timeout_s,
                              env=env)
    except (OSError, subprocess.TimeoutExpired) as err:
        return GpuDiscovery([], "none", [f"the torch GPU probe failed: {err}"])
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return GpuDiscovery([], "none", [f"the torch GPU probe exited {done.returncode}: {last}"])
    rows = json.loads(done.stdout.strip().splitlines()[-1])
    return GpuDiscovery([Gpu(**row) for row in rows], "torch", [])


def _driver_present() -> bool:
    """False only where no GPU driver can exist: Linux without the NVIDIA driver or ROCm's /dev/kfd."""
    if not sys.platform.startswith("linux"):
        return True
    return Path("/proc/driver/nvidia").exists() or Path("/dev/kfd").exists()


def discover_gpus(nvidia_smi: str | None = None, timeout_s: float = 15.0) -> GpuDiscovery:
    """This machine's GPUs, without initialising CUDA here.

    nvidia-smi first; then torch in a subprocess (ROCm, or a container without nvidia-smi), skipped on
    Linux when no GPU driver is loaded, so CPU-only boxes pay nothing.
    """
    executable = nvidia_smi or shutil.which("nvidia-smi")
    if executable:
        found = _nvidia_smi(executable, timeout_s)
        if found is not None:
            return found
    if not _driver_present():
        return GpuDiscovery([], "none", [])
    return probe_with_torch()


def read_inventory(path: Path) -> GpuDiscovery:
    """GPUs from a file holding nvidia-smi's query output (the miner's hidden ``--gpu-inventory``)."""
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise ConfigError(f"--gpu-inventory {path}: {err.strerror}") from None
    gpus, warnings = parse_nvidia_smi(text)
    if not gpus:
        raise ConfigError(f"--gpu-inventory {path} lists no GPU: write lines like '0, NVIDIA A100, 81920, GPU-…'")
    return GpuDiscovery(gpus, "inventory file", warnings)


def select_gpus(gpus: Sequence[Gpu], choice: str | None) -> list[Gpu]:
    """The GPUs ``--gpus`` names: ``all`` (or nothing), or comma-separated indices or UUIDs."""
    wanted = [part.strip() for part in (choice or "all").split(",") if part.strip()]
    if not wanted or wanted == ["all"]:
        return list(gpus)
    by_key = {str(g.index): g for g in gpus} | {g.uuid: g for g in gpus if g.uuid}
    unknown = [w for w in wanted if w not in by_key]
    if unknown:
        have = ", ".join(f"{g.index} ({g.name})" for g in gpus) or "none"
        raise ConfigError(f"--gpus {choice}: no GPU {', '.join(unknown)} here; GPUs found: {have}")
    chosen: list[Gpu] = []
    for key in wanted:
        if by_key[key] not in chosen:
            chosen.append(by_key[key])
    return chosen
