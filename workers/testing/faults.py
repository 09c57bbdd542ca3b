"""Faults of an honest miner, for the time-limit tests: each a miner middleware, like the cheats.

``hang``: a model call that never returns for a job whose prompt holds ``HANG_MARK`` and ignores every
deadline, as a hung CUDA kernel or driver call does (the jobs batched with it hang too); other jobs run honestly.
The miner's soft limit cannot stop it (no step boundary is ever reached), so only its hard time limit can
(``workers.miner.watchdog``).
Started as ``EmbeddedNetwork.start_miner(cheat="hang")`` through ``workers.testing.cheater``; the production
miner never imports this.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from heurist.jobs import ImageParams, TextParams
from workers.miner.middleware import Middleware
from workers.miner.pipelines.backend import BatchItem, OnToken, Pipeline, PipelineOutput

HANG_MARK = "[hang]"


@dataclass
class Hanging(Pipeline):
    """An honest pipeline whose call blocks for ever on a marked prompt."""

    honest: Pipeline
    stuck: threading.Event

    def __post_init__(self) -> None:
        self.spec = self.honest.spec
        self.weights_sha256 = self.honest.weights_sha256
        self.max_batch = self.honest.max_batch  # batched as the honest pipeline is: a marked job hangs its batch

    def run(self, params: ImageParams | TextParams, deadline_at: float,
            on_token: OnToken | None = None) -> PipelineOutput:
        self._maybe_hang([params])
        return self.honest.run(params, deadline_at, on_token)

    def batch_key(self, params: ImageParams | TextParams) -> Hashable:
        return self.honest.batch_key(params)

    def run_batch(self, items: list[BatchItem]) -> list[PipelineOutput | BaseException]:
        self._maybe_hang([item.params for item in items])
        return self.honest.run_batch(items)

    def _maybe_hang(self, params: list[ImageParams | TextParams]) -> None:
        if any(HANG_MARK in p.prompt for p in params):
            self.stuck.set()
            threading.Event().wait()  # never set: no deadline, no step boundary, no return


class HangOnMark(Middleware):
    """Wraps every pipeline in ``Hanging``; ``stuck`` is set once a call has hung (for in-process tests)."""

    def __init__(self) -> None:
        self.stuck = threading.Event()

    def wrap_pipelines(self, pipelines: dict[str, Pipeline]) -> dict[str, Pipeline]:
        return {mid: Hanging(p, self.stuck) for mid, p in pipelines.items()}


FAULTS: dict[str, Callable[[], Middleware]] = {"hang": HangOnMark}

__all__ = ["FAULTS", "HANG_MARK", "HangOnMark", "Hanging"]
