"""Typed job payloads and completions: what travels on the broker between client, miner and ledger."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from heurist.catalog.schema import JobKind

SHA256_HEX = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
ADDRESS = Annotated[str, Field(pattern=r"^0x[0-9a-fA-F]{40}$")]
SIGNATURE = Annotated[str, Field(pattern=r"^(0x)?[0-9a-fA-F]{130}$")]


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL (\\x00) characters")
    return value


# Free text that is stored: PostgreSQL refuses NUL characters in text, so requests refuse them first.
Text = Annotated[str, AfterValidator(_no_nul)]


class JobState(StrEnum):
    QUEUED = "queued"  # recorded and sent to the model's queue
    COMPLETED = "completed"  # verified completion, points credited
    LATE = "late"  # verified but past its deadline: output kept, no points
    REJECTED = "rejected"  # a registered miner's completion failed verification
    FAILED = "failed"  # the miner reported an error

    @property
    def terminal(self) -> bool:
        return self is not JobState.QUEUED

    @property
    def has_output(self) -> bool:
        return self in (JobState.COMPLETED, JobState.LATE)


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def canonical_json(model: BaseModel) -> bytes:
    """Canonical bytes of a model for signing: sorted-key compact JSON."""
    return json.dumps(model.model_dump(mode="json"), sort_keys=True, separators=(",", ":")).encode()


class Signable(Frozen):
    """A claim a miner signs with its key (EIP-191 over the canonical JSON)."""

    def signing_payload(self) -> bytes:
        return canonical_json(self)


class ImageParams(Frozen):
    kind: Literal[JobKind.IMAGE] = JobKind.IMAGE
    prompt: Text = Field(min_length=1)
    negative_prompt: Text = ""
    width: int
    height: int
    steps: int
    guidance: float
    seed: int = Field(ge=0, lt=2**32)


class TextParams(Frozen):
    kind: Literal[JobKind.TEXT] = JobKind.TEXT
    prompt: Text = Field(min_length=1)
    max_tokens: int
    temperature: float = Field(0.0, ge=0, le=2)
    seed: int = Field(0, ge=0, lt=2**32)


JobParams = Annotated[ImageParams | TextParams, Field(discriminator="kind")]


class JobMessage(Frozen):
    """The whole of what a miner learns about a job: no database URL, no storage keys."""

    job_id: str
    model_id: str
    params: JobParams
    output_url: str = Field(description="Presigned PUT URL for the output object.")
    deadline_at: float = Field(description="Unix time after which the job earns nothing.")
    stream: bool = Field(False, description="Publish the answer's tokens to heurist.stream as they are made "
                                            "(unverified previews; text jobs only).")


class SignedJob(Frozen):
    """A job message as it travels: signed by the network's dispatcher (EIP-712, ``heurist.signing``).

    Miners obey only this. Anyone who may publish into a tier queue can forge a ``JobMessage``; only the
    dispatcher's key makes a signature that recovers to the ``dispatch_address`` miners are given."""

    job: JobMessage
    signature: SIGNATURE


FAILURE_ERROR_CHARS = 200


class Failure(Frozen):
    """A miner's report that a job it ran raised. Signed (EIP-712): an unsigned report let anyone fail anyone's
    job. ``error`` is short, for people; it is never parsed."""

    job_id: str = Field(min_length=1, max_length=200)
    miner: ADDRESS
    error: str = Field(max_length=FAILURE_ERROR_CHARS)
    failed_at: float


class SignedFailure(Frozen):
    failure: Failure
    signature: SIGNATURE


class DeviceInfo(Frozen):
    kind: str  # "cuda" or "cpu"
    name: str
    vram_gb: float
    torch_threads: int | None = None


class Timings(Frozen):
    load_s: float = 0.0  # time spent loading (0: pipelines are loaded at worker start)
    run_s: float
    upload_s: float
    total_s: float


class Completion(Signable):
    """A miner's claim that it did a job. Signed; the ledger checks everything it can."""

    job_id: str
    model_id: str
    miner: ADDRESS
    output_sha256: SHA256_HEX
    output_bytes: int = Field(ge=0)
    content_type: str
    input_tokens: int = Field(0, ge=0)
    output_tokens: int = Field(0, ge=0)
    timings: Timings
    device: DeviceInfo
    weights_sha256: SHA256_HEX = Field(description="Attestation of the model files loaded "
                                                   "(heurist.catalog.attestation.weights_digest).")
    finished_at: float


class SignedCompletion(Frozen):
    completion: Completion
    signature: SIGNATURE


class TextOutput(Frozen):
    """The JSON object a text job stores: the answer and its token counts (and ids, for the audit)."""

    text: str
    input_tokens: int
    output_tokens: int
    output_token_ids: list[int]
    finish_reason: Literal["stop", "length", "deadline"]


class TokenChunk(Frozen):
    """One streamed token of a text job (``done``: the end of the stream, carrying no token).

    An unverified preview sent straight from the miner: the verified answer is still the stored
    ``TextOutput`` the ledger checks, so applications must not bill or trust by chunks.
    """

    job_id: str
    index: int = Field(ge=0)
    text: str
    token_id: int | None = None
    done: bool = False
    finish_reason: Literal["stop", "length", "deadline", "error"] | None = None


class MinerHello(Signable):
    """A miner announcing itself at worker start; signed, so registration proves key possession."""

    miner: ADDRESS
    models: list[str]
    queues: list[str]
    device: DeviceInfo
    started_at: float


class SignedHello(Frozen):
    hello: MinerHello
    signature: SIGNATURE


class Heartbeat(Signable):
    """A miner saying it is up and consuming, every ``heartbeat_interval_s``; signed, so nobody can keep
    another miner's uptime alive. ``sent_at`` is only checked for freshness: the ledger counts its own time."""

    miner: ADDRESS
    sent_at: float


class SignedHeartbeat(Frozen):
    heartbeat: Heartbeat
    signature: SIGNATURE
