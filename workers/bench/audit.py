"""`heurist bench audit`: what auditing a job costs next to generating it, measured side by side in one run.

For each loaded model the reference job (``workers.bench.models.reference_params``) is generated as a miner
does (``pipeline.run``) and checked as the auditor does (``workers.audit.auditor.CHECKS``: an image is re-rendered
and compared, so about 1x; a text answer is teacher-forced once, about 0.1x), alternately, after a warm-up
of each. The ratio is median audit time / median generate time.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from rich.console import Console

from heurist.catalog import Catalog, JobKind
from heurist.jobs import ImageParams, TextParams
from heurist.settings import Settings
from workers.audit.auditor import CHECKS
from workers.bench.models import LATER, bench_progress, device_label, load_models, reference_params, timed
from workers.miner.pipelines.backend import Pipeline


@dataclass(frozen=True)
class AuditCost:
    """One model's generate and audit times (medians) and whether the honest replay passed every time."""

    model_id: str
    kind: JobKind
    generate_s: float
    audit_s: float
    replay_passed: bool

    @property
    def ratio(self) -> float:
        return self.audit_s / self.generate_s


@dataclass(frozen=True)
class AuditBench:
    device: str
    repeat: int
    costs: list[AuditCost]

    def ratio_for(self, kind: JobKind) -> float | None:
        """The median ratio over this kind's models (None: none was measured)."""
        ratios = [c.ratio for c in self.costs if c.kind is kind]
        return statistics.median(ratios) if ratios else None


def _checked(pipeline: Pipeline, params: ImageParams | TextParams, claimed: bytes) -> tuple[float, bool]:
    started = time.perf_counter()
    finding = CHECKS[pipeline.spec.kind](pipeline, params, claimed)
    return time.perf_counter() - started, finding.passed


def audit_cost(pipeline: Pipeline, repeat: int, advance: Callable[[], object]) -> AuditCost:
    """Generate then audit the reference job, once to warm up and ``repeat`` times timed."""
    params = reference_params(pipeline.spec)
    generate_s: list[float] = []
    audit_s: list[float] = []
    passed = True
    for round_ in range(repeat + 1):
        gen, output = timed(partial(pipeline.run, params, LATER))
        check, ok = _checked(pipeline, params, output.data)
        passed = passed and ok
        if round_ > 0:  # round 0 is the warm-up
            generate_s.append(gen)
            audit_s.append(check)
        advance()
    return AuditCost(model_id=pipeline.spec.id, kind=pipeline.spec.kind, generate_s=statistics.median(generate_s),
                     audit_s=statistics.median(audit_s), replay_passed=passed)


def run_audit_bench(settings: Settings, catalog: Catalog, model_ids: Sequence[str] | None, device_kind: str | None,
                    repeat: int, console: Console) -> AuditBench:
    """Load the models as an auditor would and measure each one's audit cost ratio."""
    device, pipelines = load_models(settings, catalog, model_ids, device_kind, console)
    costs: list[AuditCost] = []
    with bench_progress(console) as progress:
        for model_id, pipeline in pipelines.items():
            task = progress.add_task(f"generating and auditing {model_id}", total=repeat + 1)
            costs.append(audit_cost(pipeline, repeat, partial(progress.advance, task)))
    return AuditBench(device=device_label(device), repeat=repeat, costs=costs)


def as_dict(bench: AuditBench) -> dict[str, Any]:
    """One JSON-ready object: per-model times and ratios, and the ratio per job kind."""
    models = {c.model_id: {"kind": c.kind.value, "generate_s": round(c.generate_s, 4), "audit_s": round(c.audit_s, 4),
                           "audit_cost_ratio": round(c.ratio, 4), "replay_passed": c.replay_passed}
              for c in bench.costs}
    ratios = {kind.value: bench.ratio_for(kind) for kind in JobKind}
    return {"device": bench.device, "repeat": bench.repeat, "models": models,
            "audit_cost_ratio": {k: None if v is None else round(v, 4) for k, v in ratios.items()}}
