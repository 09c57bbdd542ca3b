"""Which device this miner computes on, and what it reports about it (kind, name, memory)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from heurist.errors import ConfigError
from heurist.jobs import DeviceInfo

GIB = 1024**3


@dataclass(frozen=True)
class Device:
    """A torch device string plus the facts a miner announces (its VRAM decides which queues it serves)."""

    torch_device: str
    info: DeviceInfo

    @property
    def is_cuda(self) -> bool:
        return self.info.kind == "cuda"

    @property
    def plan_vram_gb(self) -> float:
        """The memory a miner plans its tiers with: a GPU's nominal VRAM (see ``nominal_vram_gb``), a CPU's RAM."""
        return nominal_vram_gb(self.info.vram_gb) if self.is_cuda else self.info.vram_gb


def nominal_vram_gb(gib: float) -> int:
    """A GPU's memory rounded to whole GiB, what its tier is planned with.

    Drivers report a little less than the size on the box (an H100 80GB shows 81559 MiB = 79.6 GiB, a V100
    16GB 16160 MiB = 15.8 GiB): rounding to the nearest GiB lets such cards serve their own tier, and never
    claims more than half a GiB that is not there.
    """
    return round(gib)


def system_ram_gb() -> float:
    """Total physical memory in GB: what a CPU miner has in place of VRAM."""
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB, 1)
    except (ValueError, OSError, AttributeError):  # not POSIX
        import psutil

        return round(psutil.virtual_memory().total / GIB, 1)


def _cuda_info(index: int) -> DeviceInfo:
    import torch

    props = torch.cuda.get_device_properties(index)
    return DeviceInfo(kind="cuda", name=props.name, vram_gb=round(props.total_memory / GIB, 1),
                      torch_threads=torch.get_num_threads())


def list_cuda_devices() -> list[DeviceInfo]:
    """Every visible CUDA device, in index order (empty without CUDA)."""
    import torch

    if not torch.cuda.is_available():
        return []
    return [_cuda_info(i) for i in range(torch.cuda.device_count())]


def cpu_name() -> str:
    """The CPU model (from /proc/cpuinfo on Linux), else the architecture."""
    import platform

    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def _cpu() -> Device:
    import torch

    info = DeviceInfo(kind="cpu", name=f"{cpu_name()} ({os.cpu_count()} cores)", vram_gb=system_ram_gb(),
                      torch_threads=torch.get_num_threads())
    return Device(torch_device="cpu", info=info)


def _cuda(index: int) -> Device:
    import torch

    if not torch.cuda.is_available():
        raise ConfigError("CUDA was requested but torch sees none: check the driver or use --device cpu")
    if not 0 <= index < torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise ConfigError(f"cuda:{index} does not exist: this machine has {count} CUDA device(s)")
    return Device(torch_device=f"cuda:{index}", info=_cuda_info(index))


def detect_device(force: str | None = None, threads: int | None = None) -> Device:
    """The best device here (``cuda:0`` if torch sees CUDA, else CPU), or the one ``force`` names.

    ``force``: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``. ``threads``, if given, sets torch's intra-op thread
    count for this process (the only global state this module changes, and only when asked).
    """
    import torch

    if threads is not None:
        if threads < 1:
            raise ConfigError(f"threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)
    choice = (force or "").strip().lower()
    if choice == "cpu":
        return _cpu()
    if choice.startswith("cuda"):
        index = choice.removeprefix("cuda").removeprefix(":") or "0"
        if not index.isdigit():
            raise ConfigError(f"unknown device {force!r}: use cpu, cuda or cuda:N")
        return _cuda(int(index))
    if choice:
        raise ConfigError(f"unknown device {force!r}: use cpu, cuda or cuda:N")
    return _cuda(0) if torch.cuda.is_available() else _cpu()
