"""The metric plausibility rules (``heurist.audit.metrics``), one case each, against stated benchmarks."""

from __future__ import annotations

import pytest

from heurist.audit.metrics import FAST_SLACK, SLOW_SLACK, ReportedMetrics, check_metrics
from heurist.catalog import ModelSpec, load_catalog
from heurist.catalog.schema import Benchmark
from heurist.jobs import DeviceInfo, ImageParams, TextParams, Timings

CPU = DeviceInfo(kind="cpu", name="test cpu", vram_gb=0.0)
GPU = DeviceInfo(kind="cuda", name="NVIDIA A100", vram_gb=80.0)
CPU_S_PER_UNIT, GPU_S_PER_UNIT = 40.0, 2.0
IMAGE = ImageParams(prompt="p", width=512, height=512, steps=20, guidance=7.5, seed=1)  # exactly 1 unit
TEXT = TextParams(prompt="p", max_tokens=500)


def _bench(kind: str, seconds: float) -> Benchmark:
    return Benchmark(device=f"{kind}: test", device_kind=kind, date="2026-11-25",  # type: ignore[arg-type]
                     seconds_per_unit=seconds, reference_job="test", family_reference="sd15")


@pytest.fixture(scope="module")
def spec() -> ModelSpec:
    return load_catalog()["sd15"].model_copy(update={"benchmarks": [_bench("cpu", CPU_S_PER_UNIT),
                                                                     _bench("cuda", GPU_S_PER_UNIT)]})


def reported(run_s: float, device: DeviceInfo = CPU, *, wall_s: float = 1e6, tokens: int = 0,
             registered: DeviceInfo | None = None) -> ReportedMetrics:
    return ReportedMetrics(timings=Timings(run_s=run_s, upload_s=0.01, total_s=run_s + 0.01), device=device,
                           output_tokens=tokens, wall_s=wall_s, registered_device=registered)


def test_honest_timings_are_plausible(spec: ModelSpec) -> None:
    assert check_metrics(spec, IMAGE, reported(CPU_S_PER_UNIT)).plausible
    assert check_metrics(spec, IMAGE, reported(GPU_S_PER_UNIT, GPU)).plausible
    assert check_metrics(spec, IMAGE, reported(CPU_S_PER_UNIT * 100)).plausible  # a busy CPU is only slow


def test_more_work_than_the_job_existed_for(spec: ModelSpec) -> None:
    verdict = check_metrics(spec, IMAGE, reported(50.0, wall_s=10.0))
    assert not verdict.plausible and "existed for 10.0s" in verdict.detail


def test_a_device_other_than_the_registered_one(spec: ModelSpec) -> None:
    verdict = check_metrics(spec, IMAGE, reported(GPU_S_PER_UNIT, GPU, registered=CPU))
    assert not verdict.plausible and "registered cpu" in verdict.detail
    threads = CPU.model_copy(update={"torch_threads": 7})  # thread count is not the device
    assert check_metrics(spec, IMAGE, reported(CPU_S_PER_UNIT, threads, registered=CPU)).plausible


def test_faster_than_the_fastest_benchmark_allows(spec: ModelSpec) -> None:
    floor = GPU_S_PER_UNIT / FAST_SLACK  # the fastest benchmark of the kind bounds it: cpu vs cpu here
    assert not check_metrics(spec, IMAGE, reported(CPU_S_PER_UNIT / FAST_SLACK * 0.9)).plausible
    assert check_metrics(spec, IMAGE, reported(CPU_S_PER_UNIT / FAST_SLACK * 1.1)).plausible
    assert not check_metrics(spec, IMAGE, reported(floor * 0.9, GPU)).plausible


def test_a_cpu_claiming_a_gpu_is_too_slow_for_it(spec: ModelSpec) -> None:
    verdict = check_metrics(spec, IMAGE, reported(GPU_S_PER_UNIT * SLOW_SLACK * 1.5, GPU, registered=GPU))
    assert not verdict.plausible and "not that GPU" in verdict.detail


def test_text_speed_counts_output_tokens_only(spec: ModelSpec) -> None:
    """A long prompt answered with 10 tokens is quick: prompt tokens cost little, so they are not counted."""
    ten_tokens = CPU_S_PER_UNIT * 10 / 1000
    assert check_metrics(spec, TEXT, reported(ten_tokens, tokens=10)).plausible
    assert not check_metrics(spec, TEXT, reported(ten_tokens / (FAST_SLACK * 2), tokens=10)).plausible


def test_no_benchmark_of_the_kind_means_no_speed_verdict() -> None:
    bare = load_catalog()["sd15"]
    verdict = check_metrics(bare, IMAGE, reported(0.0001))
    assert verdict.plausible and "no cpu benchmark" in verdict.detail
