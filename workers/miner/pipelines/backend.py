"""The pipeline interface every model backend implements: params in, output bytes out, by a deadline."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

from heurist.catalog.schema import ModelSpec
from heurist.errors import HeuristError
from heurist.jobs import ImageParams, TextParams


class DeadlineExceeded(HeuristError):
    """The deadline passed while the job ran: the pipeline stopped early, as the output would earn nothing."""


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
        """Run one job; stop early once ``time.time()`` passes ``deadline_at`` (unix seconds). Text
        pipelines call ``on_token`` as tokens are made (for streaming); others ignore it."""
