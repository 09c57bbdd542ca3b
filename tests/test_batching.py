"""``heurist.batching.MicroBatcher``, the miner's ``ModelBatches`` and its watchdog over several jobs, with real
threads (no model: the pipelines here record what they were handed; SmolLM2 batches: tests/test_llm_batching.py)."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest

from heurist.batching import MicroBatcher
from heurist.catalog import load_catalog
from heurist.jobs import ImageParams, JobMessage, TextParams
from heurist.time_limits import JobClock
from workers.miner.batches import ModelBatches
from workers.miner.pipelines.backend import BatchItem, DeadlineExceeded, OnToken, Pipeline, PipelineOutput
from workers.miner.watchdog import Watchdog
from workers.testing.faults import HangOnMark

CATALOG = load_catalog()
LATER = math.inf  # a deadline no test reaches


def concurrently(count: int, call: Callable[[int], object]) -> list[object]:
    """``call(n)`` for n in range(count), each on its own thread, started together; results or exceptions."""
    start = threading.Barrier(count)

    def one(n: int) -> object:
        start.wait()
        try:
            return call(n)
        except Exception as err:
            return err

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


class Recorder:
    """A ``run_batch`` that notes each batch and answers ``item * 10`` (an exception for a negative item)."""

    def __init__(self, pause_s: float = 0.0) -> None:
        self.batches: list[list[int]] = []
        self.pause_s = pause_s

    def __call__(self, items: list[int]) -> Sequence[int | BaseException]:
        self.batches.append(list(items))
        time.sleep(self.pause_s)
        return [ValueError(f"bad item {i}") if i < 0 else i * 10 for i in items]


def test_concurrent_items_run_as_one_batch_and_each_caller_gets_its_own_result() -> None:
    run = Recorder()
    batcher: MicroBatcher[int, int] = MicroBatcher(run, max_size=8, window_s=2.0)
    started = time.monotonic()
    assert concurrently(8, batcher.submit) == [n * 10 for n in range(8)]
    assert time.monotonic() - started < 1.5  # a full batch does not wait out its window
    assert len(run.batches) == 1 and sorted(run.batches[0]) == list(range(8))
    assert (batcher.batches, batcher.items) == (1, 8)


def test_batches_hold_at_most_max_size_and_one_key() -> None:
    run = Recorder(pause_s=0.05)
    batcher: MicroBatcher[int, int] = MicroBatcher(run, max_size=3, window_s=0.2, key=lambda i: i % 2)
    assert concurrently(10, batcher.submit) == [n * 10 for n in range(10)]
    assert sorted(i for batch in run.batches for i in batch) == list(range(10))
    for batch in run.batches:
        assert 1 <= len(batch) <= 3 and len({i % 2 for i in batch}) == 1
    assert len(run.batches) >= 4  # 5 even and 5 odd items, 3 at most per batch


def test_a_lone_item_waits_out_the_window_then_runs_alone() -> None:
    run = Recorder()
    batcher: MicroBatcher[int, int] = MicroBatcher(run, max_size=4, window_s=0.3)
    started = time.monotonic()
    assert batcher.submit(5) == 50
    assert 0.25 <= time.monotonic() - started < 2.0
    alone: MicroBatcher[int, int] = MicroBatcher(Recorder(), max_size=1, window_s=5.0)
    started = time.monotonic()
    assert concurrently(3, alone.submit) == [0, 10, 20]
    assert time.monotonic() - started < 2.0 and alone.batches == 3  # max_size 1: never waits, each alone


def test_items_arriving_during_a_batch_form_the_next_one() -> None:
    run = Recorder(pause_s=0.5)
    batcher: MicroBatcher[int, int] = MicroBatcher(run, max_size=8, window_s=0.0)
    first = batcher.enqueue(0)
    time.sleep(0.1)  # the first batch (of one) is running
    assert concurrently(4, lambda n: batcher.submit(n + 1)) == [10, 20, 30, 40]
    assert first.result() == 0
    assert run.batches[0] == [0] and sorted(run.batches[1]) == [1, 2, 3, 4]


def test_an_item_s_exception_is_its_own_and_a_failed_batch_fails_only_its_items() -> None:
    run = Recorder()
    batcher: MicroBatcher[int, int] = MicroBatcher(run, max_size=4, window_s=0.5)
    outcomes = concurrently(4, lambda n: batcher.submit(-1 if n == 2 else n))
    assert outcomes[:2] == [0, 10] and outcomes[3] == 30
    assert isinstance(outcomes[2], ValueError) and "bad item -1" in str(outcomes[2])

    calls = 0

    def flaky(items: list[int]) -> list[int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("device lost")
        return [i for i in items][:-1] if calls == 2 else list(items)

    batcher = MicroBatcher(flaky, max_size=2, window_s=0.5)
    assert all(isinstance(o, RuntimeError) and "device lost" in str(o) for o in concurrently(2, batcher.submit))
    miscounted = concurrently(2, batcher.submit)
    assert all(isinstance(o, RuntimeError) and "1 results for a batch of 2" in str(o) for o in miscounted)
    assert batcher.submit(7) == 7  # the batcher's thread survived both


def test_close_fails_waiting_items_and_refuses_new_ones() -> None:
    release = threading.Event()

    def slow(items: list[int]) -> list[int]:
        release.wait(5)
        return list(items)

    batcher: MicroBatcher[int, int] = MicroBatcher(slow, max_size=1, window_s=0.0)
    running = batcher.enqueue(1)
    time.sleep(0.1)
    waiting = batcher.enqueue(2)
    threading.Timer(0.3, release.set).start()
    batcher.close(wait_s=5)
    assert running.result(0) == 1  # the running batch ended (close waited for it)
    with pytest.raises(RuntimeError, match="closed before this item ran"):
        waiting.result(0)
    with pytest.raises(RuntimeError, match="is closed"):
        batcher.submit(3)


def test_a_withdrawn_item_never_runs_and_the_batcher_goes_on() -> None:
    run = Recorder(pause_s=0.3)
    batcher: MicroBatcher[int, int] = MicroBatcher(run, max_size=8, window_s=0.0)
    running = batcher.enqueue(0)
    time.sleep(0.1)  # its batch runs: the next item waits
    waiting = batcher.enqueue(1)
    assert batcher.withdraw(waiting) and waiting.cancelled()
    assert not batcher.withdraw(running)  # taken by a batch already: its result comes as usual
    assert batcher.submit(2) == 20 and running.result(0) == 0
    assert run.batches == [[0], [2]]

    windowed: MicroBatcher[int, int] = MicroBatcher(run, max_size=8, window_s=0.3)
    oldest = windowed.enqueue(3)
    time.sleep(0.1)
    assert windowed.withdraw(oldest)  # during its batch's window: the window ends on nothing, the thread lives on
    time.sleep(0.4)
    assert windowed.submit(4) == 40
    assert run.batches == [[0], [2], [4]]


def test_close_during_the_window_runs_no_empty_batch() -> None:
    run = Recorder()
    batcher: MicroBatcher[int, int] = MicroBatcher(run, max_size=8, window_s=0.5)
    waiting = batcher.enqueue(1)
    time.sleep(0.1)  # the batcher's thread waits out the window for more items
    batcher.close(wait_s=2)
    with pytest.raises(RuntimeError, match="closed before this item ran"):
        waiting.result(0)
    assert run.batches == []  # before: its thread went on with an empty batch, run_batch([])


# --- the miner's batches --------------------------------------------------------------------------------------


class Noting(Pipeline):
    """A pipeline that notes its batches; a text row ends early (``on_done``) when its max_tokens is 1."""

    def __init__(self, model_id: str, max_batch: int, pause_s: float = 0.2,
                 log: list[tuple[str, str, float]] | None = None) -> None:
        self.spec, self.max_batch, self.pause_s = CATALOG[model_id], max_batch, pause_s
        self.batches: list[list[str]] = []
        self.log = log if log is not None else []

    def run(self, params: ImageParams | TextParams, deadline_at: float,
            on_token: OnToken | None = None) -> PipelineOutput:
        return self.run_batch([BatchItem(params, deadline_at, on_token)])[0]  # type: ignore[return-value]

    def batch_key(self, params: ImageParams | TextParams) -> Hashable:
        return params.width if isinstance(params, ImageParams) else None

    def run_batch(self, items: list[BatchItem]) -> list[PipelineOutput | BaseException]:
        self.batches.append([item.params.prompt for item in items])
        self.log.append((self.spec.id, "start", time.monotonic()))
        outputs = [PipelineOutput(item.params.prompt.encode(), "text/plain") for item in items]
        for item, output in zip(items, outputs, strict=True):
            if isinstance(item.params, TextParams) and item.params.max_tokens == 1 and item.on_done is not None:
                item.on_done(output)
        time.sleep(self.pause_s)
        self.log.append((self.spec.id, "end", time.monotonic()))
        return list(outputs)


def text(prompt: str, max_tokens: int = 8) -> TextParams:
    return TextParams(prompt=prompt, max_tokens=max_tokens)


def test_worker_concurrency_is_the_largest_batch_the_setting_allows() -> None:
    pipelines = {"smollm2-135m": Noting("smollm2-135m", 64), "tiny-sd": Noting("tiny-sd", 4)}
    assert ModelBatches(pipelines, max_batch=8).concurrency == 8
    assert ModelBatches(pipelines, max_batch=2).concurrency == 2
    assert ModelBatches({"tiny-sd": Noting("tiny-sd", 4)}, max_batch=8).concurrency == 4
    unbatched = HangOnMark().wrap_pipelines({"tiny-sd": Noting("tiny-sd", 1)})
    assert ModelBatches(unbatched, max_batch=8).concurrency == 1
    wrapped = HangOnMark().wrap_pipelines({"tiny-sd": Noting("tiny-sd", 4)})  # forwards the honest batching
    assert ModelBatches(wrapped, max_batch=8).concurrency == 4
    assert ModelBatches(wrapped, max_batch=8).run("tiny-sd", text("ok"), LATER).data == b"ok"


def test_jobs_batch_by_model_and_key_one_batch_at_a_time_and_private_ones_alone() -> None:
    log: list[tuple[str, str, float]] = []
    llm, sd = Noting("smollm2-135m", 64, log=log), Noting("tiny-sd", 4, log=log)
    batches = ModelBatches({"smollm2-135m": llm, "tiny-sd": sd}, max_batch=8, window_s=0.3)
    image = {n: ImageParams(prompt=f"i{n}", width=64 if n % 2 else 128, height=64, steps=2, guidance=7.5, seed=n)
             for n in range(4)}

    def job(n: int) -> object:
        if n < 4:
            return batches.run("tiny-sd", image[n], LATER).data
        return batches.run("smollm2-135m", text(f"t{n}"), LATER, alone=n >= 8).data

    assert concurrently(10, job) == [f"i{n}".encode() for n in range(4)] + [f"t{n}".encode() for n in range(4, 10)]
    assert sorted(map(sorted, sd.batches)) == [["i0", "i2"], ["i1", "i3"]]  # one width per batch
    assert sorted(["t4", "t5", "t6", "t7"]) in map(sorted, llm.batches)
    assert ["t8"] in llm.batches and ["t9"] in llm.batches  # private: a batch of its own
    spans = sorted(log, key=lambda entry: entry[2])
    assert [what for _, what, _ in spans] == ["start", "end"] * (len(spans) // 2)  # never two at once
    assert batches.stats() == {"smollm2-135m": (3, 6), "tiny-sd": (2, 4)}


def test_a_row_done_early_returns_before_its_batch_ends() -> None:
    llm = Noting("smollm2-135m", 8, pause_s=1.0)
    batches = ModelBatches({"smollm2-135m": llm}, max_batch=8, window_s=0.5)
    took: dict[int, float] = {}

    def job(n: int) -> object:
        started = time.monotonic()
        data = batches.run("smollm2-135m", text(f"t{n}", max_tokens=1 if n == 0 else 8), LATER).data
        took[n] = time.monotonic() - started
        return data

    assert concurrently(3, job) == [b"t0", b"t1", b"t2"]
    assert len(llm.batches) == 1
    assert took[0] < 0.8 <= min(took[1], took[2])  # job 0 did not wait for the batch's 1 s
    batches.close()


def test_the_watchdog_watches_every_running_job() -> None:
    """Two jobs at once: the one that ends disarms only itself; the hung one is reported at its own hard limit."""
    fired: list[str] = []
    exited = threading.Event()
    watchdog = Watchdog(lambda job, err: fired.append(job.job_id), exit=lambda code: exited.set())

    def job(job_id: str) -> JobMessage:
        return JobMessage(job_id=job_id, model_id="smollm2-135m", params=text("p"), deadline_at=time.time() + 60,
                          output_url="http://127.0.0.1:1/b/k.json")

    now = time.time()
    hung, quick = threading.Event(), threading.Event()

    def watched(job_id: str, hard_in: float, until: threading.Event) -> None:
        with watchdog.watch(job(job_id), JobClock(started_at=now, soft_at=now, hard_at=now + hard_in)):
            until.wait(10)

    threads = [threading.Thread(target=watched, args=("hung", 1.0, hung), daemon=True),
               threading.Thread(target=watched, args=("quick", 0.6, quick), daemon=True)]
    for thread in threads:
        thread.start()
    time.sleep(0.2)
    quick.set()  # ends before its hard limit
    assert exited.wait(5)
    assert fired == ["hung"] and time.time() - now >= 1.0
    hung.set()


@pytest.mark.parametrize("behind", ["its model's batch", "another model's batch"])
def test_a_job_behind_a_long_batch_fails_by_its_soft_limit_and_never_runs(behind: str) -> None:
    """The device is busy 1.5 s; a job with a 0.3 s soft limit fails by it, before its hard limit, where the
    watchdog would have ended the miner; it is not run once the device is free."""
    llm, sd = Noting("smollm2-135m", 8, pause_s=1.5), Noting("tiny-sd", 4, pause_s=0.0)
    batches = ModelBatches({"smollm2-135m": llm, "tiny-sd": sd}, max_batch=8, window_s=0.0)
    fired: list[str] = []
    watchdog = Watchdog(lambda job, err: fired.append(job.job_id), exit=lambda code: None)
    long = threading.Thread(target=batches.run, args=("smollm2-135m", text("long"), LATER), daemon=True)
    long.start()
    time.sleep(0.2)  # the long batch holds the device
    model, params = ("smollm2-135m", text("short")) if behind == "its model's batch" else ("tiny-sd", ImageParams(
        prompt="short", width=64, height=64, steps=2, guidance=7.5, seed=1))
    now = time.time()
    short = JobMessage(job_id="short", model_id=model, params=params, deadline_at=now + 1.0,
                       output_url="http://127.0.0.1:1/b/k.json")
    with watchdog.watch(short, JobClock(started_at=now, soft_at=now + 0.3, hard_at=now + 0.9)), \
            pytest.raises(DeadlineExceeded, match="withdrawn at its time limit"):
        batches.run(model, params, now + 0.3)
    assert time.time() - now < 0.85  # by its soft limit (+0.2 s margin), not when the device is free
    long.join(5)
    time.sleep(0.2)
    assert fired == []
    assert llm.batches == [["long"]] and sd.batches == []  # withdrawn: never run
    assert batches.run(model, params, LATER).data == b"short"  # the batcher and the device serve on
    batches.close()
