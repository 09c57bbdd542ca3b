"""The cheater suite: one miner per kind of cheat the seed names, each caught; honest miners never penalized.

Every job takes the production path minus the broker (which tests/test_audit_e2e.py covers): the real
``MinerRuntime`` runs the (rigged) pipeline at 1 torch thread, PUTs to SeaweedFS through a presigned URL
and signs; the ledger on PostgreSQL verifies, credits and flags odd metrics (its middleware); the trusted
``Auditor`` replays at 2 threads. Each job comes from a fresh miner key, so bans never hide a check: a
job is *caught* when it ends with nothing credited (rejected by the ledger, or audited and clawed back).
Run with ``-s`` to see the table of catch rates the issue note reports.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"

import torch

from heurist.audit.middleware import MetricsFlagging
from heurist.catalog import Catalog, ModelSpec, load_catalog
from heurist.catalog.attestation import WeightPins
from heurist.catalog.schema import Benchmark
from heurist.db.engine import make_engine
from heurist.db.migrate import upgrade
from heurist.identity import Wallet
from heurist.jobs import DeviceInfo, ImageParams, JobMessage, MinerHello, SignedHello, TextParams
from heurist.ledger.audit_service import AuditLedger
from heurist.ledger.service import Ledger
from heurist.ledger.tables import AuditReason, Reason
from heurist.points import image_work_units, text_work_units
from heurist.settings import Settings
from heurist.signing import sign_message
from heurist.storage.backends.s3 import S3ObjectStore
from heurist.storage.seaweed import SeaweedServer
from workers.audit.auditor import Auditor
from workers.miner.device import detect_device
from workers.miner.middleware import Middleware, default_middleware
from workers.miner.pipelines import load_pipeline
from workers.miner.pipelines.backend import Pipeline
from workers.miner.runtime import MinerRuntime
from workers.testing.cheats import CHEATS, FakeDevice, cheating

pytestmark = pytest.mark.slow  # 19 cheats on a live ledger and auditor: 3-4 min (`make test-slow`)

IMAGE_SEEDS = range(4)
HONEST_IMAGE_SEEDS = range(100, 106)
PROMPTS = ["Name three primary colors.", "What is the capital of France?", "Write one sentence about rain."]
HONEST_PROMPTS = [*PROMPTS, "List two kinds of fruit."]
MINER_THREADS, AUDITOR_THREADS = 1, 2
# The stated cuda benchmark: a GPU this much faster than one thread of this CPU (an H100 renders SD far more
# than 200x faster than one CPU core). At 30x, a CPU liar escaped SLOW_SLACK (20x) whenever a busy CI machine had
# slowed the module's benchmark by 1.5x: 1 of 4 caught. At 200x it escapes only by running 10x faster than measured.
GPU_SPEEDUP = 200.0


@contextmanager
def threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def image(seed: int) -> ImageParams:
    return ImageParams(prompt="a lighthouse on a cliff", width=64, height=64, steps=10, guidance=7.5, seed=seed)


def text(prompt: str) -> TextParams:
    return TextParams(prompt=prompt, max_tokens=24)


@dataclass(frozen=True)
class Outcome:
    credited: bool  # points remain after everything: not caught
    rejected: Reason | None
    flagged: bool
    audit_reason: AuditReason | None
    job_id: str = ""


@dataclass
class Network:
    """The trusted side (ledger, audits, auditor, store) with honest pipelines loaded once."""

    catalog: Catalog
    ledger: Ledger
    audits: AuditLedger
    auditor: Auditor
    store: S3ObjectStore
    honest: dict[str, Pipeline]
    rigged: dict[tuple[str, str], tuple[dict[str, Pipeline], list[Middleware]]] = field(default_factory=dict)

    def miner_parts(self, model_id: str, cheat: str | None) -> tuple[dict[str, Pipeline], list[Middleware]]:
        """The honest pipeline, or the cheat's version of it (made once: perturbing weights copies them)."""
        if cheat is None:
            return self.honest, []
        if (model_id, cheat) not in self.rigged:
            self.rigged[model_id, cheat] = cheating({model_id: self.honest[model_id]}, cheat)
        return self.rigged[model_id, cheat]

    def run(self, model_id: str, params: ImageParams | TextParams, cheat: str | None = None,
            registered: DeviceInfo | None = None) -> Outcome:
        wallet, spec = Wallet.create(), self.catalog[model_id]
        pipelines, extra = self.miner_parts(model_id, cheat)
        device = detect_device("cpu").info
        self._register(wallet, registered or device, model_id)
        runtime = MinerRuntime(wallet=wallet, device=device, pipelines=pipelines,
                               middleware=[*default_middleware(), *extra])
        with threads(MINER_THREADS):
            signed = runtime.execute(self._job(spec, params))
        verdict = self.ledger.record_completion(signed)
        if not verdict.accepted:
            return Outcome(False, verdict.reason, False, None)
        flagged = self.audits.standing(wallet.address).odd_metrics  # by the ledger's MetricsFlagging
        with threads(AUDITOR_THREADS):
            audit = self.auditor.audit(verdict.job_id)
        credited = self.audits.balance(wallet.address).total_micro > 0
        return Outcome(credited, None, flagged, audit["reason"], verdict.job_id)

    def _register(self, wallet: Wallet, device: DeviceInfo, model_id: str) -> None:
        hello = MinerHello(miner=wallet.address, models=[model_id], queues=[], device=device, started_at=time.time())
        assert self.ledger.register_miner(SignedHello(hello=hello, signature=sign_message(wallet, hello)))

    def _job(self, spec: ModelSpec, params: ImageParams | TextParams) -> JobMessage:
        job_id = str(uuid.uuid4())
        key = f"outputs/{spec.id}/{job_id}{'.png' if isinstance(params, ImageParams) else '.json'}"
        deadline = time.time() + 3600
        self.ledger.book.create_job(job_id, spec, params, key, spec.queue, deadline)
        return JobMessage(job_id=job_id, model_id=spec.id, params=params, output_url=self.store.presign_put(key, 600),
                          deadline_at=deadline)


def _benchmarked(spec: ModelSpec, seconds_per_unit: float) -> ModelSpec:
    """``spec`` with a CPU benchmark measured here and a stated GPU one GPU_SPEEDUP times faster."""
    common = {"date": "2026-11-25", "reference_job": "test", "family_reference": spec.id}
    return spec.model_copy(update={"benchmarks": [
        Benchmark(device="cpu: this machine", device_kind="cpu", seconds_per_unit=seconds_per_unit, **common),
        Benchmark(device="cuda: stated", device_kind="cuda", seconds_per_unit=seconds_per_unit / GPU_SPEEDUP,
                  **common),
    ]})


def _seconds_per_unit(pipeline: Pipeline, params: ImageParams | TextParams) -> float:
    timings = []
    with threads(MINER_THREADS):
        for _ in range(3):  # the fastest of 3: a busy machine must not make honest miners look too fast
            started = time.perf_counter()
            out = pipeline.run(params, float("inf"))
            timings.append(time.perf_counter() - started)
    elapsed = min(timings)
    if isinstance(params, ImageParams):
        return elapsed / image_work_units(params)
    return elapsed / text_work_units(out.input_tokens, out.output_tokens)


@pytest.fixture(scope="module")
def net(module_postgres_url: str, seaweed: SeaweedServer, shared_models_dir: Path) -> Iterator[Network]:
    shipped = load_catalog()
    honest = {mid: load_pipeline(shipped[mid], detect_device("cpu"), shared_models_dir)
              for mid in ("tiny-sd", "smollm2-135m")}
    rates = {"tiny-sd": _seconds_per_unit(honest["tiny-sd"], image(0)),
             "smollm2-135m": _seconds_per_unit(honest["smollm2-135m"], text(PROMPTS[0]))}
    models = {mid: _benchmarked(spec, rates[mid]) if mid in rates else spec for mid, spec in shipped.models.items()}
    catalog = replace(shipped, models=models)
    for pipeline in honest.values():
        pipeline.spec = catalog[pipeline.spec.id]
    settings = Settings(_env_file=None, s3_endpoint=seaweed.endpoint, s3_access_key=seaweed.access_key,  # type: ignore[call-arg]
                        s3_secret_key=seaweed.secret_key, s3_bucket=f"cheat-{uuid.uuid4().hex[:8]}")
    store = S3ObjectStore.from_settings(settings)
    store.ensure_bucket()
    upgrade(module_postgres_url)
    engine = make_engine(module_postgres_url)
    audits = AuditLedger(engine)
    ledger = Ledger(engine, catalog, store, pins=WeightPins(shared_models_dir), middleware=[MetricsFlagging()])
    yield Network(catalog, ledger, audits, Auditor(ledger=ledger, audits=audits, pipelines=honest), store, honest)
    engine.dispose()


def _report(name: str, outcomes: list[Outcome]) -> int:
    caught = sum(not o.credited for o in outcomes)
    how = sorted({str(o.rejected or o.audit_reason) for o in outcomes if not o.credited})
    flagged = sum(o.flagged for o in outcomes)
    print(f"\n{name:<34} caught {caught}/{len(outcomes)} by {', '.join(how) or '-'}; ledger flagged {flagged}")
    return caught


# cheat -> the checks that may catch it. A cheat that skips the work also reports an impossible speed (a
# random image "takes" 1 ms), and the metric check runs before the replay.
IMAGE_CHEATS: dict[str, set[Reason | AuditReason]] = {
    "random-image": {AuditReason.METRICS_IMPLAUSIBLE},
    "not-an-image": {AuditReason.OUTPUT_UNDECODABLE},
    "fewer-steps": {AuditReason.IMAGE_MISMATCH},
    "other-seed": {AuditReason.IMAGE_MISMATCH},
    "low-res": {AuditReason.IMAGE_MISMATCH, AuditReason.METRICS_IMPLAUSIBLE},
    "tampered-weights": {AuditReason.IMAGE_MISMATCH},
    "modified-weights": {Reason.WEIGHTS_MISMATCH},
    "fake-latency": {AuditReason.METRICS_IMPLAUSIBLE},
    "fake-device": {AuditReason.METRICS_IMPLAUSIBLE},
}
TEXT_CHEATS: dict[str, set[Reason | AuditReason]] = {
    "garbage-text": {AuditReason.TEXT_MISMATCH},
    "truncated-text": {Reason.TOKEN_MISMATCH},  # its stored count says whole, its ids a quarter
    "inflated-tokens": {Reason.TOKEN_MISMATCH},
    "tampered-weights": {AuditReason.TEXT_MISMATCH},
    "modified-weights": {Reason.WEIGHTS_MISMATCH},
    "fake-latency": {AuditReason.METRICS_IMPLAUSIBLE},
}


def test_every_cheat_in_workers_cheats_is_in_the_suite() -> None:
    assert set(CHEATS) == set(IMAGE_CHEATS) | set(TEXT_CHEATS)


def test_honest_image_miners_are_never_penalized(net: Network) -> None:
    outcomes = [net.run("tiny-sd", image(seed)) for seed in HONEST_IMAGE_SEEDS]
    assert _report("honest tiny-sd (1 vs 2 threads)", outcomes) == 0
    assert not any(o.flagged or o.rejected or o.audit_reason for o in outcomes)


def test_honest_text_miners_are_never_penalized(net: Network) -> None:
    outcomes = [net.run("smollm2-135m", text(p)) for p in HONEST_PROMPTS]
    assert _report("honest smollm2 (1 vs 2 threads)", outcomes) == 0
    assert not any(o.flagged or o.rejected or o.audit_reason for o in outcomes)


@pytest.mark.parametrize("cheat", IMAGE_CHEATS)
def test_image_cheat_is_caught(net: Network, cheat: str) -> None:
    outcomes = [net.run("tiny-sd", image(seed), cheat) for seed in IMAGE_SEEDS]
    assert _report(f"tiny-sd {cheat}", outcomes) == len(outcomes)
    assert {o.rejected or o.audit_reason for o in outcomes} <= IMAGE_CHEATS[cheat]


@pytest.mark.parametrize("cheat", TEXT_CHEATS)
def test_text_cheat_is_caught(net: Network, cheat: str) -> None:
    outcomes = [net.run("smollm2-135m", text(p), cheat) for p in PROMPTS]
    assert _report(f"smollm2 {cheat}", outcomes) == len(outcomes)
    assert {o.rejected or o.audit_reason for o in outcomes} <= TEXT_CHEATS[cheat]


def test_fake_metrics_are_flagged_by_the_ledger_before_any_audit(net: Network) -> None:
    """The ledger's own check flags them, so the sampler audits such miners at the suspicious rate."""
    for cheat in ("fake-latency", "fake-device"):
        assert all(net.run("tiny-sd", image(seed), cheat).flagged for seed in IMAGE_SEEDS[:2]), cheat


def test_a_consistent_gpu_liar_is_caught_by_speed(net: Network) -> None:
    """A CPU miner that registers as an H100 too: only the GPU benchmark's speed gives it away."""
    outcomes = [net.run("tiny-sd", image(seed), "fake-device", registered=FakeDevice.CLAIMED) for seed in IMAGE_SEEDS]
    assert _report("tiny-sd fake-device (consistent)", outcomes) == len(outcomes)
    assert all(o.audit_reason is AuditReason.METRICS_IMPLAUSIBLE for o in outcomes)


def test_a_judged_job_is_never_replayed_again(net: Network, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another replay_job for a job this auditor judged (a redelivery, a repeated or forged message) answers
    with the first verdict: no second replay (the auditor's dearest step), no second clawback."""
    first = net.run("tiny-sd", image(IMAGE_SEEDS[0]), "other-seed")
    assert first.audit_reason is AuditReason.IMAGE_MISMATCH and not first.credited
    replays: list[object] = []
    pipeline = net.auditor.pipelines["tiny-sd"]
    honest_run = pipeline.run

    def counted(*args: Any, **kwargs: Any) -> Any:
        replays.append(args)
        return honest_run(*args, **kwargs)

    monkeypatch.setattr(pipeline, "run", counted)
    again = net.auditor.audit(first.job_id)
    assert replays == []
    assert again["duplicate"] and not again["passed"] and again["reason"] is AuditReason.IMAGE_MISMATCH
    assert net.audits.balance(again["miner"]).total_micro == 0
    assert net.audits.standing(again["miner"]).failed == 1
