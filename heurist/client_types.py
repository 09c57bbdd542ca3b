"""What the client takes and gives back: requests for ``Client.map`` and a finished job's ``JobResult``.

Plain frozen dataclasses, apart from ``heurist.client`` so that module stays about sending and waiting; both are
re-exported there (``from heurist.client import JobResult`` keeps working).
"""

from __future__ import annotations

from dataclasses import dataclass

from heurist.jobs import JobState
from heurist.privacy.client import AccInput


@dataclass(frozen=True)
class JobResult:
    """A finished job as the ledger verified it."""

    job_id: str
    model_id: str
    state: JobState
    points: float
    miner: str | None
    url: str | None
    output_key: str
    output_sha256: str | None = None
    error: str | None = None
    frozen_key: str | None = None  # the credited bytes, copied where no URL can write (heurist.storage.freeze)
    private: bool = False  # a private job: ``url`` serves ciphertext, ``Client.fetch_output`` the plaintext

    @property
    def stored_key(self) -> str:
        """Where the credited output is read: the frozen copy, else (completed before freezing) the output key."""
        return self.frozen_key or self.output_key


@dataclass(frozen=True)
class ImageRequest:
    prompt: str
    model: str
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    guidance: float | None = None
    seed: int | None = None
    negative_prompt: str = ""
    private: bool = False  # sealed for privacy-enabled miners that satisfy ``acc`` (heurist.privacy)
    acc: AccInput = None  # the access-control condition (None: ``heurist.privacy.acc.DEFAULT``)


@dataclass(frozen=True)
class TextRequest:
    prompt: str
    model: str
    max_tokens: int | None = None
    temperature: float = 0.0
    seed: int | None = None
    private: bool = False
    acc: AccInput = None


__all__ = ["ImageRequest", "JobResult", "TextRequest"]
