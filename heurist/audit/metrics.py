"""Metric tampering: could the claimed device have done this job in the time the miner reports?

``heurist bench models`` records, per model and device, the seconds one standard unit of its reference
job takes. A completion's reported metrics are implausible when:

* it reports more time than the job existed (from its creation to the completion's arrival): impossible
  on any device;
* it claims a device other than the one the miner registered with;
* it ran more than ``FAST_SLACK`` times faster than the fastest benchmark of the claimed device kind
  (fake latency; bigger jobs amortise fixed costs, which measured up to 2.6x per unit on tiny-sd, 64² to
  256² pixels, so the slack is wider than that);
* it claims a GPU yet ran more than ``SLOW_SLACK`` times slower than the slowest GPU benchmark: a CPU
  miner claiming a GPU. A CPU may be arbitrarily slow (shared cores): no lower speed bound there.

Text speed is judged by output tokens only: decoding dominates, and counting cheap prompt tokens would
make long-prompt jobs look impossibly fast. Without a benchmark of the claimed kind there is no speed
verdict (said in the detail). Pure and torch-free: the ledger flags with it, the auditor fails with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from heurist.catalog.schema import ModelSpec
from heurist.jobs import DeviceInfo, ImageParams, TextParams, Timings
from heurist.points import TOKENS_PER_UNIT, image_work_units

FAST_SLACK = 5.0
SLOW_SLACK = 20.0
CLOCK_SLACK_S = 2.0  # clocks of the ledger and the miner's reported durations may disagree this much


@dataclass(frozen=True)
class MetricsVerdict:
    plausible: bool
    detail: str
    metrics: dict[str, float] = field(default_factory=dict)


class ClaimedRun(Protocol):
    """What a miner claims about a run, wherever it was read from."""

    @property
    def timings(self) -> Timings: ...
    @property
    def device(self) -> DeviceInfo: ...
    @property
    def output_tokens(self) -> int: ...


@dataclass(frozen=True)
class ReportedMetrics:
    """What a completion says about how the job ran, and what the ledger saw around it."""

    timings: Timings
    device: DeviceInfo
    output_tokens: int
    wall_s: float  # from the job's creation to the completion's arrival, by the ledger's clock
    registered_device: DeviceInfo | None = None

    @classmethod
    def of(cls, claim: ClaimedRun, wall_s: float, registered_device: DeviceInfo | None) -> ReportedMetrics:
        """From a completion (the ledger, as it verifies) or an accepted claim (the auditor, from the database)."""
        return cls(timings=claim.timings, device=claim.device, output_tokens=claim.output_tokens, wall_s=wall_s,
                   registered_device=registered_device)


def speed_units(params: ImageParams | TextParams, output_tokens: int) -> float:
    """The work a job's run time is judged by: image units, or output tokens per 1000."""
    if isinstance(params, ImageParams):
        return image_work_units(params)
    return output_tokens / TOKENS_PER_UNIT


def _same_device(a: DeviceInfo, b: DeviceInfo) -> bool:
    return (a.kind, a.name, a.vram_gb) == (b.kind, b.name, b.vram_gb)


def _bounds(spec: ModelSpec, kind: str) -> tuple[float, float] | None:
    """(fastest, slowest) seconds per unit benchmarked for this kind of device, or None if never."""
    rates = [b.seconds_per_unit for b in spec.benchmarks if b.device_kind == kind]
    return (min(rates), max(rates)) if rates else None


def _speed_verdict(spec: ModelSpec, reported: ReportedMetrics, units: float) -> MetricsVerdict:
    run_s, kind = reported.timings.run_s, reported.device.kind
    bounds = _bounds(spec, kind)
    if bounds is None or units <= 0:
        return MetricsVerdict(True, f"no {kind} benchmark of {spec.id}: speed not judged", {"run_s": run_s})
    fastest, slowest = bounds
    floor_s, ceiling_s = units * fastest / FAST_SLACK, units * slowest * SLOW_SLACK
    metrics = {"run_s": run_s, "min_plausible_s": floor_s, "units": units}
    if run_s < floor_s:
        return MetricsVerdict(False, f"reports {run_s:.3f}s on {reported.device.name}; the fastest {kind} "
                              f"benchmark of {spec.id} allows no less than {floor_s:.3f}s", metrics)
    if kind == "cuda" and run_s > ceiling_s:
        return MetricsVerdict(False, f"claims {reported.device.name} but took {run_s:.1f}s, over {SLOW_SLACK:g}x "
                              f"the slowest GPU benchmark ({units * slowest:.2f}s): not that GPU", metrics)
    return MetricsVerdict(True, "", metrics)


def check_metrics(spec: ModelSpec, params: ImageParams | TextParams, reported: ReportedMetrics) -> MetricsVerdict:
    """Whether the reported run time and device are possible for this job (see the module docstring)."""
    t = reported.timings
    if max(t.run_s, t.total_s) > reported.wall_s + CLOCK_SLACK_S:
        return MetricsVerdict(False, f"reports {max(t.run_s, t.total_s):.1f}s of work on a job that existed "
                              f"for {reported.wall_s:.1f}s", {"run_s": t.run_s, "wall_s": reported.wall_s})
    if reported.registered_device is not None and not _same_device(reported.device, reported.registered_device):
        return MetricsVerdict(False, f"claims {reported.device.kind} {reported.device.name!r}; the miner "
                              f"registered {reported.registered_device.kind} {reported.registered_device.name!r}")
    return _speed_verdict(spec, reported, speed_units(params, reported.output_tokens))
