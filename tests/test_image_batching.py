"""Image jobs batched in one diffusers call: each PNG is its single render's bytes; deadlines stay per job."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # never reach a model hub from tests (set before hub libraries import)

from heurist.catalog import load_catalog
from heurist.errors import InvalidJobError
from heurist.jobs import ImageParams, TextParams
from workers.bench.image_batching import measure_image_batching
from workers.miner.batches import ModelBatches
from workers.miner.device import detect_device
from workers.miner.pipelines import DeadlineExceeded, PipelineOutput, load_pipeline
from workers.miner.pipelines.backend import BatchItem
from workers.miner.pipelines.backends.diffusion import DiffusionPipeline

LATER = 3600.0  # seconds: a deadline no test reaches
PROMPTS = ("a lighthouse at dawn", "a cat", "mountains in fog over a long quiet lake at dusk", "x")


@pytest.fixture(scope="module")
def tiny_sd(shared_models_dir: Path) -> DiffusionPipeline:
    pipeline = load_pipeline(load_catalog()["tiny-sd"], detect_device("cpu"), shared_models_dir)
    assert isinstance(pipeline, DiffusionPipeline)
    return pipeline


def image(seed: int, prompt: str = PROMPTS[0], negative: str = "blurry", guidance: float = 7.5,
          steps: int = 20) -> ImageParams:
    return ImageParams(prompt=prompt, negative_prompt=negative, width=64, height=64, steps=steps, guidance=guidance,
                       seed=seed)


def items(params: list[ImageParams], deadline_in: float = LATER) -> list[BatchItem]:
    return [BatchItem(p, time.time() + deadline_in) for p in params]


def png(result: PipelineOutput | BaseException) -> bytes:
    assert isinstance(result, PipelineOutput), result
    return result.data


@pytest.mark.parametrize(("jobs", "negative", "guidance"), [(4, "blurry", 7.5), (3, "", 7.5), (2, "blurry", 1.0)])
def test_batched_images_are_the_single_renders_bytes(tiny_sd: DiffusionPipeline, jobs: int, negative: str,
                                                     guidance: float) -> None:
    params = [image(seed=10 + i, prompt=PROMPTS[i], negative=negative, guidance=guidance) for i in range(jobs)]
    assert len({tiny_sd.batch_key(p) for p in params}) == 1
    alone = [tiny_sd.run(p, time.time() + LATER).data for p in params]
    together = [png(result) for result in tiny_sd.run_batch(items(params))]
    assert len(set(alone)) == jobs  # distinct images, so equality below means each got its own seed and prompt
    assert together == alone
    assert tiny_sd.rows.jobs == 0  # the per-job products are off again for single jobs


def test_batch_key_groups_what_one_call_can_take(tiny_sd: DiffusionPipeline) -> None:
    key = tiny_sd.batch_key(image(seed=1))
    assert tiny_sd.batch_key(image(seed=2, prompt="another prompt", negative="ugly")) == key
    for other in (image(seed=1, steps=10), image(seed=1, guidance=5.0), image(seed=1, negative=""),
                  image(seed=1).model_copy(update={"width": 96})):
        assert tiny_sd.batch_key(other) != key
    assert tiny_sd.max_batch > 1


def test_refused_and_late_jobs_fail_alone(tiny_sd: DiffusionPipeline) -> None:
    good = [image(seed=3, steps=4), image(seed=4, prompt=PROMPTS[1], steps=4)]
    batch = [BatchItem(TextParams(prompt="hi", max_tokens=4), time.time() + LATER),
             BatchItem(good[0], time.time() + LATER),
             BatchItem(image(seed=5, steps=4), time.time() - 1),
             BatchItem(good[1], time.time() + LATER)]
    results = tiny_sd.run_batch(batch)
    assert isinstance(results[0], InvalidJobError)
    assert isinstance(results[2], DeadlineExceeded) and "before starting" in str(results[2])
    assert [png(results[1]), png(results[3])] == [tiny_sd.run(p, time.time() + LATER).data for p in good]


def test_a_deadline_mid_batch_fails_only_the_late_job(tiny_sd: DiffusionPipeline) -> None:
    on_time = image(seed=6, prompt=PROMPTS[2], steps=60)
    released: list[tuple[BaseException, float]] = []
    started = time.perf_counter()
    results = tiny_sd.run_batch([BatchItem(image(seed=7, steps=60), time.time() + 0.3,
                                           on_fail=lambda err: released.append((err, time.perf_counter()))),
                                 BatchItem(on_time, time.time() + LATER)])
    took = time.perf_counter() - started
    assert took > 0.3  # the early deadline passed during the call, which ran on for the other job
    assert isinstance(results[0], DeadlineExceeded)
    assert "after step" in str(results[0]) and "ran on" in str(results[0])
    assert len(released) == 1 and released[0][0] is results[0]  # handed over once, at the step marking it late
    assert released[0][1] - started < took / 2
    assert png(results[1]) == tiny_sd.run(on_time, time.time() + LATER).data


def test_a_late_image_job_s_thread_is_released_before_its_batch_ends(tiny_sd: DiffusionPipeline) -> None:
    """Through the miner's batches: the late job's thread raises at its deadline, its batch mate gets its image
    when the call ends (before, both threads waited for the end)."""
    batches = ModelBatches({"tiny-sd": tiny_sd}, max_batch=4, window_s=0.5)
    start = threading.Barrier(2)
    ended: dict[int, tuple[object, float]] = {}

    def job(n: int, deadline_in: float) -> None:
        start.wait()
        began = time.perf_counter()
        try:
            outcome: object = batches.run("tiny-sd", image(seed=20 + n, steps=80), time.time() + deadline_in).data
        except DeadlineExceeded as err:
            outcome = err
        ended[n] = (outcome, time.perf_counter() - began)

    threads = [threading.Thread(target=job, args=(0, 1.2)), threading.Thread(target=job, args=(1, LATER))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    (late, late_s), (image_png, batch_s) = ended[0], ended[1]
    assert batches.stats() == {"tiny-sd": (1, 2)}  # one call held both
    assert isinstance(late, DeadlineExceeded) and "after step" in str(late)
    assert isinstance(image_png, bytes) and image_png.startswith(b"\x89PNG")
    assert late_s < min(2.5, batch_s / 2)  # released within a step or two of its deadline, not at the end
    batches.close()


def test_a_batch_stops_when_every_job_is_late(tiny_sd: DiffusionPipeline) -> None:
    params = [image(seed=8, steps=500), image(seed=9, steps=500)]
    started = time.perf_counter()
    results = tiny_sd.run_batch([BatchItem(params[0], time.time() + 0.2), BatchItem(params[1], time.time() + 0.4)])
    assert time.perf_counter() - started < 20  # 500 steps of 2 images would take ~40 s: it stopped between steps
    assert all(isinstance(r, DeadlineExceeded) and "after step" in str(r) for r in results)
    assert tiny_sd.rows.jobs == 0


def test_measure_image_batching_reports_its_fields(tiny_sd: DiffusionPipeline) -> None:
    result = measure_image_batching(tiny_sd, jobs=2, repeat=1, steps=2)
    assert result.jobs == 2 and result.identical is True
    assert result.sequential_s > 0 and result.batched_s > 0
    assert result.ratio == pytest.approx(result.sequential_s / result.batched_s, rel=0.01)
