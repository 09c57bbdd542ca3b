"""`heurist bench models`, the miner half: load models as a miner does and time each one's reference job.

Models are verified and loaded through the miner's own path (``plan_miner``, ``load_pipelines``), so a
benchmark times exactly what a miner would serve. Each model's reference job (its catalog defaults: the
image size and steps, or ``default_max_tokens`` greedy on a fixed prompt) runs once as a warm-up, then
``repeat`` times, the models taking turns so drift on a shared machine hits them alike; the median over
the job's work units (``heurist.points``) is its seconds per unit.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from datetime import date
from functools import partial

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from heurist.bench.models import ModelsBench, Timing, conclude
from heurist.catalog import Catalog, ModelSpec
from heurist.errors import ConfigError
from heurist.jobs import ImageParams, TextParams
from heurist.points import image_work_units, text_work_units
from heurist.settings import Settings
from workers.miner.device import Device, cpu_name, detect_device
from workers.miner.launch import load_pipelines, plan_miner
from workers.miner.pipelines.backend import Pipeline, PipelineOutput

IMAGE_PROMPT = "a lighthouse on a rocky coast at dawn, detailed oil painting"
TEXT_PROMPT = "Explain in detail how a lighthouse works and why ships still need one."
SEED = 7
LATER = math.inf  # no deadline: a benchmark job must never stop early


def device_label(device: Device) -> str:
    """The device string a benchmark is filed under: the GPU's name, or the CPU model and torch threads."""
    if device.is_cuda:
        return f"cuda: {device.info.name}"
    return f"cpu: {cpu_name()} x{device.info.torch_threads} threads"


def reference_params(spec: ModelSpec) -> ImageParams | TextParams:
    """The model's reference job: its catalog defaults, a fixed prompt and seed, greedy for text."""
    if spec.image is not None:
        limits = spec.image
        return ImageParams(prompt=IMAGE_PROMPT, width=limits.default_width, height=limits.default_height,
                           steps=limits.default_steps, guidance=limits.default_guidance, seed=SEED)
    if spec.text is None:
        raise ConfigError(f"model {spec.id} has neither [image] nor [text] limits")
    return TextParams(prompt=TEXT_PROMPT, max_tokens=spec.text.default_max_tokens, temperature=0.0, seed=SEED)


def job_units(params: ImageParams | TextParams, output: PipelineOutput) -> float:
    """Standard units of one job, by the points formulas (text counts the tokens actually used)."""
    if isinstance(params, ImageParams):
        return image_work_units(params)
    return text_work_units(output.input_tokens, output.output_tokens)


def describe_job(params: ImageParams | TextParams, output: PipelineOutput) -> str:
    units = job_units(params, output)
    if isinstance(params, ImageParams):
        return f"{params.width}x{params.height}, {params.steps} steps, guidance {params.guidance:g} ({units:g} units)"
    return (f"{output.input_tokens} prompt + {output.output_tokens} generated tokens, greedy, "
            f"max_tokens {params.max_tokens} ({units:g} units)")


def load_models(settings: Settings, catalog: Catalog, model_ids: Sequence[str] | None, device_kind: str | None,
                console: Console) -> tuple[Device, dict[str, Pipeline]]:
    """Verify and load the models to time, as ``heurist miner`` would (None: every model present that fits)."""
    device = detect_device(device_kind, settings.torch_threads)
    plan = plan_miner(catalog, list(catalog) if model_ids is None else model_ids, None, device)
    for reason in plan.refused:
        console.print(f"[yellow]not timed[/] {reason}")
    return device, load_pipelines(plan, settings.resolved_models_dir(), console, skip_missing=model_ids is None)


def bench_progress(console: Console) -> Progress:
    """The progress display of a benchmark (on ``console``: stderr, so --json keeps stdout clean)."""
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console)


def timed(run: Callable[[], PipelineOutput]) -> tuple[float, PipelineOutput]:
    started = time.perf_counter()
    output = run()
    return time.perf_counter() - started, output


def time_reference_jobs(pipelines: dict[str, Pipeline], repeat: int, console: Console) -> dict[str, Timing]:
    """Warm each model up once, then run every model's reference job ``repeat`` times, taking turns."""
    params = {model_id: reference_params(p.spec) for model_id, p in pipelines.items()}
    runs: dict[str, list[float]] = {model_id: [] for model_id in pipelines}
    outputs: dict[str, PipelineOutput] = {}
    with bench_progress(console) as progress:
        tasks = {model_id: progress.add_task(f"timing {model_id}", total=repeat + 1) for model_id in pipelines}
        for round_ in range(repeat + 1):
            for model_id, pipeline in pipelines.items():
                seconds, outputs[model_id] = timed(partial(pipeline.run, params[model_id], LATER))
                if round_ > 0:  # round 0 is the warm-up
                    runs[model_id].append(seconds)
                progress.advance(tasks[model_id])
    return {model_id: Timing(model_id=model_id, reference_job=describe_job(params[model_id], outputs[model_id]),
                             units=job_units(params[model_id], outputs[model_id]), runs_s=tuple(runs[model_id]))
            for model_id in pipelines}


def run_models_bench(settings: Settings, catalog: Catalog, model_ids: Sequence[str] | None,
                     device_kind: str | None, repeat: int, console: Console) -> ModelsBench:
    """Load, time and conclude: each model's seconds per unit and coefficient against its family reference."""
    device, pipelines = load_models(settings, catalog, model_ids, device_kind, console)
    timings = time_reference_jobs(pipelines, repeat, console)
    return conclude(catalog, timings, device_label(device), device.info.kind, date.today().isoformat(), repeat)
