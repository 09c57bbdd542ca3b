"""The pipeline interface every model backend implements: params in, output bytes out, by a deadline.

A backend that gains from batching (issue 17) sets ``max_batch`` above 1 and overrides ``run_batch``; the miner
runtime then gathers concurrent jobs with the same ``batch_key`` (``heurist.batching``) and runs them together.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from heurist.catalog.schema import ModelSpec
from heurist.errors import TimeLimitExceeded
from heurist.jobs import ImageParams, TextParams


class DeadlineExceeded(TimeLimitExceeded):
    """The time given passed while the job ran (the runtime gives its soft time limit, ``heurist.time_limits``):
    the pipeline stopped at a step boundary, as the output could not be stored in time. Reported as "time limit"."""


@dataclass(frozen=True)
class PipelineOutput:
    """What a job produced: the object to store and the token counts the ledger prices text by."""

    data: bytes
    content_type: str
    input_tokens: int = 0
    output_tokens: int = 0
    finish_reason: str | None = None  # text jobs: why generation stopped (the stream's last chunk says it)


OnToken = Callable[[int, str], None]
"""Called once per generated token, in order, with its id and the text it adds (possibly "")."""


@dataclass(frozen=True)
class BatchItem:
    """One job of a batch: what ``Pipeline.run`` takes for it alone."""

    params: ImageParams | TextParams
    deadline_at: float
    on_token: OnToken | None = None
    # ``run_batch`` may call this once the job's output is final, before the batch ends (a text row that stopped
    # early): the runtime hands it to the job's thread at once, to store and report within its own deadline
    on_done: Callable[[PipelineOutput], None] | None = None
    # the same for a job that failed before its batch ended (an image job past its deadline while its batch mates
    # run on): its thread raises this at once; ``run_batch`` still returns the same exception in its place
    on_fail: Callable[[BaseException], None] | None = None


class Pipeline(ABC):
    """A model loaded once at worker start; ``run`` does one job on it."""

    spec: ModelSpec
    weights_sha256: str = ""  # the attestation of the files it was loaded from (set by load_pipeline)
    max_batch: int = 1  # jobs ``run_batch`` takes at once; 1: the runtime calls ``run`` for each job alone

    @abstractmethod
    def run(self, params: ImageParams | TextParams, deadline_at: float,
            on_token: OnToken | None = None) -> PipelineOutput:
        """Run one job; stop at the next step boundary once ``time.time()`` passes ``deadline_at`` (unix
        seconds; the runtime passes the job's soft time limit): an image pipeline raises ``DeadlineExceeded``, a
        text pipeline returns the answer so far with finish reason "deadline". Text pipelines call ``on_token``
        as tokens are made (for streaming); others ignore it."""

    def batch_key(self, params: ImageParams | TextParams) -> Hashable:
        """Jobs that may share a batch have equal keys (an image pipeline: the same size and steps)."""
        return None

    def run_batch(self, items: list[BatchItem]) -> list[PipelineOutput | BaseException]:
        """Run several jobs with equal ``batch_key`` together: one output, or the job's own exception, per item
        in order, each as ``run`` would give it alone (same bytes for the same seed). This default runs them
        one by one."""
        outputs: list[PipelineOutput | BaseException] = []
        for item in items:
            try:
                outputs.append(self.run(item.params, item.deadline_at, item.on_token))
            except Exception as err:  # the job's own failure, reported for it alone
                outputs.append(err)
        return outputs
