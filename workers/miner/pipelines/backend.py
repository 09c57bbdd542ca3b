"""The pipeline interface every model backend implements: params in, output bytes out, by a deadline."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
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


class Pipeline(ABC):
    """A model loaded once at worker start; ``run`` does one job on it."""

    spec: ModelSpec
    weights_sha256: str = ""  # the attestation of the files it was loaded from (set by load_pipeline)

    @abstractmethod
    def run(self, params: ImageParams | TextParams, deadline_at: float,
            on_token: OnToken | None = None) -> PipelineOutput:
        """Run one job; stop at the next step boundary once ``time.time()`` passes ``deadline_at`` (unix
        seconds; the runtime passes the job's soft time limit): an image pipeline raises ``DeadlineExceeded``, a
        text pipeline returns the answer so far with finish reason "deadline". Text pipelines call ``on_token``
        as tokens are made (for streaming); others ignore it."""
