"""Typed job payloads and completions: what travels on the broker between client, miner and ledger."""

from __future__ import annotations

import base64
import json
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, model_validator

from heurist.catalog.schema import JobKind

SHA256_HEX = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
ADDRESS = Annotated[str, Field(pattern=r"^0x[0-9a-fA-F]{40}$")]
SIGNATURE = Annotated[str, Field(pattern=r"^(0x)?[0-9a-fA-F]{130}$")]
HEX32 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
HEX48 = Annotated[str, Field(pattern=r"^[0-9a-f]{48}$")]

# Size limits on what miners send: generous for honest use, small for storage. Issue 12, attack 7: one
# completion stored 8 MB in `rejections` and one hello 8 MB in `miners`. A field over its limit makes the
# message malformed (refused, and kept in the dead-letter queue: heurist.deadletters). Honest figures today:
# a job id is a 36-char uuid4, the longest model id 12 chars, the longest queue name ~27, a content type 16,
# a device kind 4, a CPU or GPU name ~60, a hello lists 5 models and ~5 queues, a token's text a few chars.
# With these limits a hello stores at most ~13 KB (64 x 64 + 64 x 128 chars) and a completion ~1 KB.
JOB_ID = Annotated[str, Field(min_length=1, max_length=128)]
MODEL_ID = Annotated[str, Field(min_length=1, max_length=64)]
QUEUE_NAME = Annotated[str, Field(min_length=1, max_length=128)]
SHORT_TEXT = Annotated[str, Field(max_length=64)]  # content types, device kinds
NAME_TEXT = Annotated[str, Field(max_length=256)]  # device names
MAX_LISTED = 64  # models or queues a hello may list (the catalog has 5 models)
MAX_COUNT = 2**31 - 1  # token counts: the largest max_tokens in the catalog is 4,096
MAX_BYTES = 2**40  # an output's size: 1 TiB, far above any image or answer
TOKEN_TEXT = Annotated[str, Field(max_length=256)]  # one streamed token's text (a few chars in practice)
MAX_ANSWER_CHARS = 262_144  # a stored answer: 4,096 tokens x 64 chars each
MAX_ANSWER_TOKENS = 65_536  # 16 x the catalog's largest max_tokens
# An output small enough to travel inside its completion (``heurist.ledger.inline``): 32 KiB is about 44 KB of
# base64, which with the ~1.3 KB claim stays under the ledger's 64 KiB message limit (HEURIST_MAX_MESSAGE_BYTES).
# A text answer of ~3,000 tokens (text, ids and counts as JSON) fits, and small PNGs; larger images are uploaded.
MAX_INLINE_BYTES = 32_768


def _from_base64(value: object) -> object:
    """JSON carries bytes as standard base64 (strictly decoded); bytes given in Python are taken as they are."""
    return base64.b64decode(value, validate=True) if isinstance(value, str) else value


INLINE_BYTES = Annotated[bytes, BeforeValidator(_from_base64), Field(max_length=MAX_INLINE_BYTES),
                         PlainSerializer(lambda data: base64.b64encode(data).decode(), when_used="json")]
INLINE_MARGIN_S = 60.0  # an inline output is judged late by its receipt: a miner keeps this much time to spare


def output_content_type(kind: JobKind) -> str:
    """What a public job's output is: a PNG or a ``TextOutput`` as JSON."""
    return "image/png" if kind is JobKind.IMAGE else "application/json"


def sends_inline(size: int, seconds_left: float, max_bytes: int = MAX_INLINE_BYTES) -> bool:
    """The miner's choice: inline an output of ``size`` bytes with ``seconds_left`` before its deadline
    (``max_bytes`` 0: never)."""
    return max_bytes > 0 and size <= min(max_bytes, MAX_INLINE_BYTES) and seconds_left >= INLINE_MARGIN_S


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
    REJECTED = "rejected"  # before issue 13: a miner's bad result ended the job; now it is re-sent instead
    FAILED = "failed"  # ended by the trusted side without a verified result (refunded); final

    @property
    def terminal(self) -> bool:
        return self is not JobState.QUEUED

    @property
    def has_output(self) -> bool:
        return self in (JobState.COMPLETED, JobState.LATE)


class Frozen(BaseModel):
    """Every message on the wire. ``allow_inf_nan=False``: a NaN compares false with everything, so one
    ``sent_at=NaN`` heartbeat once passed every window check and counted 8 uptime slots; infinity likewise
    escapes every bound. No field of the network has a use for either."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


def canonical_json(model: BaseModel) -> bytes:
    """Canonical bytes of a model for signing: sorted-key compact JSON."""
    return json.dumps(model.model_dump(mode="json"), sort_keys=True, separators=(",", ":")).encode()


class Signable(Frozen):
    """A claim a miner signs with its key: EIP-712 typed data in the network's domain (``heurist.signing``)."""


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


MAX_SEALED_CHARS = 1_048_576  # an encrypted job's parameters, base64: prompts of a few hundred KB at most
MAX_ACC_CHARS = 16_384  # an access-control condition's JSON (a few hundred addresses)
MAX_KEYRELEASE_NODES = 16


class SealedShare(Frozen):
    """One key-release node's share of a private job's data key, sealed (X25519 sealed box) to that node."""

    node: int = Field(ge=1, le=MAX_KEYRELEASE_NODES)
    sealed: str = Field(min_length=1, max_length=1024, description="base64 of the sealed box")


class PrivateEnvelope(Frozen):
    """A private job's encrypted parameters (``heurist.privacy.envelope``): what the broker, the store and the
    ledger see of it. ``acc`` is the access-control condition's canonical JSON (``heurist.privacy.acc``); it and
    the job id are the ciphertext's associated data and inside every sealed share, so changing either makes the
    job undecryptable."""

    version: Literal[1] = 1
    acc: str = Field(min_length=2, max_length=MAX_ACC_CHARS)
    threshold: int = Field(ge=1, le=MAX_KEYRELEASE_NODES)
    shares: list[SealedShare] = Field(min_length=1, max_length=MAX_KEYRELEASE_NODES)
    nonce: HEX48 = Field(description="XChaCha20-Poly1305 nonce, hex")
    ciphertext: str = Field(min_length=1, max_length=MAX_SEALED_CHARS, description="base64")


class JobMessage(Frozen):
    """The whole of what a miner learns about a job: no database URL, no storage keys."""

    job_id: str
    model_id: str
    params: JobParams
    output_url: str = Field(description="Presigned PUT URL for the output object.")
    deadline_at: float = Field(description="Unix time after which the job earns nothing.")
    stream: bool = Field(False, description="Publish the answer's tokens to heurist.stream as they are made "
                                            "(unverified previews; text jobs only).")
    stream_key: HEX32 | None = Field(None, description="With stream: the per-job key the miner MACs each chunk "
                                                       "with (heurist.stream_auth), made by the receiver.")
    private: PrivateEnvelope | None = Field(None, description="A private job (heurist.privacy): ``params`` then "
                                            "hold only what is billed (the prompt is PRIVATE_PROMPT); the real "
                                            "ones are sealed here, for miners that satisfy its ACC.")

    @model_validator(mode="after")
    def _stream_has_key(self) -> JobMessage:
        if self.stream != (self.stream_key is not None):
            raise ValueError("stream_key: set it exactly when stream is true (the TokenStream's key, "
                             "heurist.streams.TokenStream.key)")
        if self.stream and self.private is not None:
            raise ValueError("stream: private jobs do not stream (tokens on the broker would be plaintext, and "
                             "encrypted tokens would still give away their count and timing)")
        return self


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
    kind: SHORT_TEXT  # "cuda" or "cpu"
    name: NAME_TEXT
    vram_gb: float
    torch_threads: int | None = None


class Timings(Frozen):
    load_s: float = 0.0  # time spent loading (0: pipelines are loaded at worker start)
    run_s: float
    upload_s: float
    total_s: float


class Completion(Signable):
    """A miner's claim that it did a job. Signed; the ledger checks everything it can."""

    job_id: JOB_ID
    model_id: MODEL_ID
    miner: ADDRESS
    output_sha256: SHA256_HEX
    output_bytes: int = Field(ge=0, le=MAX_BYTES)
    content_type: SHORT_TEXT
    input_tokens: int = Field(0, ge=0, le=MAX_COUNT)
    output_tokens: int = Field(0, ge=0, le=MAX_COUNT)
    timings: Timings
    device: DeviceInfo
    weights_sha256: SHA256_HEX = Field(description="Attestation of the model files loaded "
                                                   "(heurist.catalog.attestation.weights_digest).")
    finished_at: float


class SignedCompletion(Frozen):
    """A signed claim, and with it the output itself when it is small (``output``; None: uploaded to the job's
    presigned URL). The bytes are not signed: the claim's ``output_sha256`` is, and the ledger hashes them."""

    completion: Completion
    signature: SIGNATURE
    output: INLINE_BYTES | None = None


class TextOutput(Frozen):
    """The JSON object a text job stores: the answer and its token counts (and ids, for the audit)."""

    text: str = Field(max_length=MAX_ANSWER_CHARS)
    input_tokens: int
    output_tokens: int
    output_token_ids: list[int] = Field(max_length=MAX_ANSWER_TOKENS)
    finish_reason: Literal["stop", "length", "deadline"]


class TokenChunk(Frozen):
    """One streamed token of a text job (``done``: the end of the stream, carrying no token).

    A preview sent straight from the miner, MACed with the job's stream key (``heurist.stream_auth``); the
    verified answer is still the stored ``TextOutput`` the ledger checks, so applications must not bill by chunks.
    """

    job_id: JOB_ID
    index: int = Field(ge=0)
    text: TOKEN_TEXT
    token_id: int | None = None
    done: bool = False
    finish_reason: Literal["stop", "length", "deadline", "error"] | None = None
    mac: HEX32 | None = None


class MinerHello(Signable):
    """A miner announcing itself at worker start; signed, so registration proves key possession.

    ``operator``: on a multi-GPU box, the box's own address, whose broker user this worker's key (derived from
    the operator's) connects as; the hello then carries the operator's signature of the worker's address."""

    miner: ADDRESS
    operator: ADDRESS | None = None
    models: list[MODEL_ID] = Field(max_length=MAX_LISTED)
    queues: list[QUEUE_NAME] = Field(max_length=MAX_LISTED)
    device: DeviceInfo
    started_at: float


class SignedHello(Frozen):
    hello: MinerHello
    signature: SIGNATURE
    operator_signature: SIGNATURE | None = None  # the operator's EIP-712 Delegation of this key (heurist.signing)


class Heartbeat(Signable):
    """A miner saying it is up and consuming, every ``heartbeat_interval_s``; signed, so nobody can keep
    another miner's uptime alive. ``sent_at`` is only checked for freshness: the ledger counts its own time."""

    miner: ADDRESS
    sent_at: float


class SignedHeartbeat(Frozen):
    heartbeat: Heartbeat
    signature: SIGNATURE
