"""The ledger schema (SQLAlchemy 2.0 declarative), portable between SQLite and PostgreSQL.

Times are unix seconds (float, UTC by definition), the same unit as ``JobMessage.deadline_at`` and the
ledger's clock, so deadline checks compare like with like on both databases. Points are integer
micro-points (``heurist.points.MICRO``): exact sums on both databases, no floating-point drift.
Enumerations are stored as their string values (no native enum types): later issues add entry kinds and
rejection reasons without a type migration.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, BigInteger, Double, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from heurist.catalog.schema import JobKind
from heurist.db.base import ADDRESS_LEN, ID_LEN, KEY_LEN, Base, BigId, StrEnumType
from heurist.jobs import JobState


class EntryKind(StrEnum):
    """What a points entry records. Entries are never edited: corrections are new entries.

    A miner's points are the sum of all its entries (held or not, net of clawbacks). Each kind also moves
    exactly one of two balances, so both are plain sums by kind (``heurist.ledger.audit_service``):
    *credited* (available) = job_credit + escrow_release + clawback; *escrowed* (held) = escrow +
    escrow_debit + escrow_clawback. A release is a zero-sum pair (escrow_debit -R, escrow_release +R).
    """

    JOB_CREDIT = "job_credit"  # + a verified job's points, available
    ESCROW = "escrow"  # + a verified job's points, held: the miner has not passed enough audits yet
    ESCROW_DEBIT = "escrow_debit"  # - the held balance leaving escrow (pairs with escrow_release)
    ESCROW_RELEASE = "escrow_release"  # + the same amount arriving in the available balance
    CLAWBACK = "clawback"  # - a failed audit takes back an available (or already released) credit
    ESCROW_CLAWBACK = "escrow_clawback"  # - a failed audit takes back a credit still held in escrow


CREDITED_KINDS = (EntryKind.JOB_CREDIT, EntryKind.ESCROW_RELEASE, EntryKind.CLAWBACK)
ESCROWED_KINDS = (EntryKind.ESCROW, EntryKind.ESCROW_DEBIT, EntryKind.ESCROW_CLAWBACK)
CLAWBACK_KINDS = (EntryKind.CLAWBACK, EntryKind.ESCROW_CLAWBACK)


class AuditOutcome(StrEnum):
    PASSED = "passed"
    FAILED = "failed"


class AuditReason(StrEnum):
    """Why an audit failed (a passed audit has none)."""

    IMAGE_MISMATCH = "image_mismatch"  # the replay does not match the miner's image
    TEXT_MISMATCH = "text_mismatch"  # teacher-forcing finds tokens the model would not produce
    WEIGHTS_TAMPERED = "weights_tampered"  # attested weight hashes differ from the catalog's
    METRICS_IMPLAUSIBLE = "metrics_implausible"  # reported latency impossible for the claimed device
    OUTPUT_MISSING = "output_missing"  # the output vanished before the auditor could read it
    OUTPUT_UNDECODABLE = "output_undecodable"  # not an output of the job's kind (not a PNG; not a TextOutput)
    TOKEN_MISMATCH = "token_mismatch"  # the claimed token counts are not the stored answer's


class MinerEventKind(StrEnum):
    """State changes of a miner that audits alone do not determine (a ban outlives a config change)."""

    FLAGGED = "flagged"  # odd metrics: sample at the suspicious rate until unflagged
    UNFLAGGED = "unflagged"
    BANNED = "banned"
    UNBANNED = "unbanned"  # an operator's decision; never automatic
    SAMPLING_RAISED = "sampling_raised"  # informational: the sampler moved the miner to a higher rate


class Reason(StrEnum):
    """Why a completion earned nothing (rejections), or why a verdict is not a plain credit."""

    BAD_SIGNATURE = "bad_signature"
    UNKNOWN_SIGNER = "unknown_signer"
    UNKNOWN_JOB = "unknown_job"
    UNKNOWN_MODEL = "unknown_model"  # the job's model left the catalog: trusted-side problem, job untouched
    WRONG_MODEL = "wrong_model"
    DUPLICATE = "duplicate"
    OUTPUT_MISSING = "output_missing"
    SHA256_MISMATCH = "sha256_mismatch"
    SIZE_MISMATCH = "size_mismatch"
    LATE = "late"
    BANNED = "banned"  # the miner failed too many audits: its hellos and completions are refused
    WEIGHTS_MISMATCH = "weights_mismatch"  # the miner attests model files other than the pinned ones
    WRONG_SENDER = "wrong_sender"  # signed by a key that belongs to another broker user (operator)
    OUTPUT_CHANGED = "output_changed"  # the object was overwritten between verification and freezing
    TOKEN_MISMATCH = "token_mismatch"  # claimed token counts differ from the stored answer's (or it has none)
    JOB_CLOSED = "job_closed"  # the trusted side ended the job (failed, refunded): nothing is accepted after
    FAILURE_REPORTED = "failure_reported"  # a miner's signed report that the job raised there (not a verdict)
    NOT_SERVING = "not_serving"  # a heartbeat from a broker user that holds no consumer: no uptime
    WRONG_CONTENT_TYPE = "wrong_content_type"  # a private job's output claimed public, or a public one's private


class Miner(Base):
    """A miner that proved it holds its key (a signed hello)."""

    __tablename__ = "miners"

    address: Mapped[str] = mapped_column(String(ADDRESS_LEN), primary_key=True)
    first_seen: Mapped[float] = mapped_column(Double())
    last_seen: Mapped[float] = mapped_column(Double())
    models: Mapped[list[str]] = mapped_column(JSON())
    device: Mapped[dict[str, Any]] = mapped_column(JSON())
    # The RabbitMQ user (one operator) whose inbox brought the key's first hello; only that user's messages
    # count for this key, and a ban of any of the user's keys bans them all. None: the embedded broker.
    broker_user: Mapped[str | None] = mapped_column(String(128), index=True, default=None)


class MinerUptime(Base):
    """Availability of one miner in one epoch: how many heartbeat slots of the epoch it was heard in.

    ``last_slot`` (the ledger's clock // interval) makes a second heartbeat in the same slot count nothing.
    """

    __tablename__ = "miner_uptime"

    address: Mapped[str] = mapped_column(String(ADDRESS_LEN), ForeignKey("miners.address"), primary_key=True)
    epoch: Mapped[int] = mapped_column(BigInteger(), primary_key=True)
    slots: Mapped[int] = mapped_column(Integer())
    last_slot: Mapped[int] = mapped_column(BigInteger())


class Job(Base):
    """A job as the client recorded it: the only source of its parameters."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    model_id: Mapped[str] = mapped_column(String(ID_LEN))
    kind: Mapped[JobKind] = mapped_column(StrEnumType(JobKind))
    params: Mapped[dict[str, Any]] = mapped_column(JSON())
    queue: Mapped[str] = mapped_column(String(255))
    state: Mapped[JobState] = mapped_column(StrEnumType(JobState), index=True)
    output_key: Mapped[str] = mapped_column(String(KEY_LEN))
    created_at: Mapped[float] = mapped_column(Double())
    deadline_at: Mapped[float] = mapped_column(Double())
    miner_address: Mapped[str | None] = mapped_column(
        String(ADDRESS_LEN), ForeignKey("miners.address"), index=True
    )
    finished_at: Mapped[float | None] = mapped_column(Double(), index=True)  # the exporter and sweep read recent ones
    error: Mapped[str | None] = mapped_column(Text())
    # Times the stranded-job sweep sent it again (``heurist.ledger.sweep``); its conditional UPDATE on this
    # count is what makes two sweeps re-send a job once.
    resends: Mapped[int] = mapped_column(Integer(), default=0, server_default="0")
    # A private job's ``heurist.jobs.PrivateEnvelope`` (ciphertext, ACC, sealed shares); None for a public job.
    # ``params`` then hold only what is billed (the prompt is ``heurist.privacy.client.PRIVATE_PROMPT``).
    sealed: Mapped[dict[str, Any] | None] = mapped_column(JSON())
    # Its client's secret notify key (``heurist.verdicts``): the ledger routes the verdict notice by a hash of it and
    # seals the job's view under it when the job ends. None: nobody listens (the embedded broker), so the client polls.
    notify_key: Mapped[str | None] = mapped_column(String(64))


class JobResend(Base):
    """One re-send of a job still QUEUED past its deadline (lost, purged or never taken), append-only.
    ``(job_id, attempt)`` is unique: a re-send is recorded once however many sweeps race on it."""

    __tablename__ = "job_resends"
    __table_args__ = (UniqueConstraint("job_id", "attempt", name="uq_job_resends_job_id_attempt"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(ID_LEN), ForeignKey("jobs.id"), index=True)
    attempt: Mapped[int] = mapped_column(Integer())  # 1 for the first re-send
    sent_at: Mapped[float] = mapped_column(Double())
    previous_deadline_at: Mapped[float] = mapped_column(Double())  # the deadline that passed
    deadline_at: Mapped[float] = mapped_column(Double())  # the fresh one: sent_at + the job's original duration


class CompletionRow(Base):
    """The one accepted completion of a job (its primary key is the job id: a second cannot be inserted)."""

    __tablename__ = "completions"

    job_id: Mapped[str] = mapped_column(String(ID_LEN), ForeignKey("jobs.id"), primary_key=True)
    miner_address: Mapped[str] = mapped_column(String(ADDRESS_LEN), ForeignKey("miners.address"), index=True)
    output_sha256: Mapped[str] = mapped_column(String(64))
    output_bytes: Mapped[int] = mapped_column(BigInteger())
    content_type: Mapped[str] = mapped_column(Text())
    input_tokens: Mapped[int] = mapped_column(Integer())  # as claimed (and signed); credit clamps them
    output_tokens: Mapped[int] = mapped_column(Integer())
    timings: Mapped[dict[str, Any]] = mapped_column(JSON())
    device: Mapped[dict[str, Any]] = mapped_column(JSON())
    weights_sha256: Mapped[str | None] = mapped_column(String(64))  # the miner's attestation (None before 0003)
    finished_at: Mapped[float] = mapped_column(Double())  # the miner's claim; kept so the signature verifies
    signature: Mapped[str] = mapped_column(String(132))
    received_at: Mapped[float] = mapped_column(Double())
    # The credited bytes, copied where no URL can write (heurist.storage.freeze); None before migration 0011:
    # readers then fall back to the job's output_key, checked against output_sha256.
    frozen_key: Mapped[str | None] = mapped_column(String(KEY_LEN))
    uploaded_at: Mapped[float | None] = mapped_column(Double())  # lateness's clock: LastModified, or first receipt
    # of an inline output (heurist.ledger.inline)


class PointsEntry(Base):
    """The append-only points ledger. A database trigger refuses UPDATE and DELETE (see migration 0001)."""

    __tablename__ = "points_entries"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    idempotency_key: Mapped[str] = mapped_column(String(255), unique=True)
    miner_address: Mapped[str] = mapped_column(String(ADDRESS_LEN), ForeignKey("miners.address"), index=True)
    job_id: Mapped[str | None] = mapped_column(String(ID_LEN), ForeignKey("jobs.id"), index=True)
    kind: Mapped[EntryKind] = mapped_column(StrEnumType(EntryKind))
    amount_micro: Mapped[int] = mapped_column(BigInteger())
    created_at: Mapped[float] = mapped_column(Double())


class Rejection(Base):
    """A completion that earned nothing, and why. ``job_id`` is as claimed: it may name no job."""

    __tablename__ = "rejections"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(ID_LEN), index=True)
    miner_address: Mapped[str | None] = mapped_column(String(ADDRESS_LEN))
    reason: Mapped[Reason] = mapped_column(StrEnumType(Reason))
    detail: Mapped[str] = mapped_column(Text())
    received_at: Mapped[float] = mapped_column(Double())


class Audit(Base):
    """One auditor's verdict on one job (append-only; a database trigger refuses UPDATE and DELETE).
    An auditor judges a job once: (job_id, auditor) is unique, so re-recording a verdict adds nothing."""

    __tablename__ = "audits"
    __table_args__ = (UniqueConstraint("job_id", "auditor", name="uq_audits_job_id_auditor"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(ID_LEN), ForeignKey("jobs.id"), index=True)
    miner_address: Mapped[str] = mapped_column(String(ADDRESS_LEN), ForeignKey("miners.address"), index=True)
    outcome: Mapped[AuditOutcome] = mapped_column(StrEnumType(AuditOutcome))
    reason: Mapped[AuditReason | None] = mapped_column(StrEnumType(AuditReason))
    detail: Mapped[str] = mapped_column(Text())
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON())
    audited_at: Mapped[float] = mapped_column(Double())
    auditor: Mapped[str] = mapped_column(String(255))


class MinerEvent(Base):
    """Append-only miner state changes (bans, metric flags); the latest of a pair wins (by id)."""

    __tablename__ = "miner_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    miner_address: Mapped[str] = mapped_column(String(ADDRESS_LEN), ForeignKey("miners.address"), index=True)
    kind: Mapped[MinerEventKind] = mapped_column(StrEnumType(MinerEventKind))
    detail: Mapped[str] = mapped_column(Text())
    created_at: Mapped[float] = mapped_column(Double())


__all__ = [
    "CLAWBACK_KINDS",
    "CREDITED_KINDS",
    "ESCROWED_KINDS",
    "Audit",
    "AuditOutcome",
    "AuditReason",
    "CompletionRow",
    "EntryKind",
    "Job",
    "JobResend",
    "Miner",
    "MinerEvent",
    "MinerEventKind",
    "PointsEntry",
    "Reason",
    "Rejection",
]
