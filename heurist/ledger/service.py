"""The trusted ledger: verify miners' signed completions and credit points exactly once per job.

Verification reads first (signature, miner, job, stored object) without holding a write transaction, so
S3 round trips never keep a database lock; then it writes the verdict in one short transaction. Exactly
once rests on unique constraints, not on the earlier read: ``completions.job_id`` is the primary key
(one accepted completion per job) and ``points_entries.idempotency_key`` is unique. Two ledger workers
racing on the same job both pass the reads; the second insert fails, rolls back, and is answered with
the first verdict.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import Engine, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from heurist.catalog import Catalog, ModelSpec
from heurist.catalog.attestation import WeightPins
from heurist.db.base import ID_LEN
from heurist.db.engine import session_factory, session_scope
from heurist.identity import recover_signer
from heurist.jobs import Completion, DeviceInfo, ImageParams, JobState, SignedCompletion, SignedHello
from heurist.ledger.jobbook import JobBook
from heurist.ledger.middleware import Accepted, LedgerMiddleware, Refused
from heurist.ledger.reader import PARAMS, LedgerReader, sum_micro
from heurist.ledger.standing import NEW_MINER_AUDITS, MinerStanding, read_banned, read_standing
from heurist.ledger.tables import CompletionRow, EntryKind, Job, Miner, PointsEntry, Reason, Rejection
from heurist.points import MICRO, from_micro, job_points, to_micro
from heurist.storage.backend import ObjectInfo, ObjectStore

log = logging.getLogger(__name__)

# No tokenizer emits more tokens than the prompt has bytes; the slack covers chat-template tokens.
PROMPT_TOKEN_SLACK = 64
# A job may still take a completion in these states; COMPLETED and LATE already hold one.
OPEN_STATES = (JobState.QUEUED, JobState.FAILED, JobState.REJECTED)


# ---------------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class RegistrationVerdict:
    """Whether a miner's hello proved its key; ``address`` is the checksummed signer when accepted."""

    accepted: bool
    address: str
    reason: Reason | None = None


@dataclass(frozen=True)
class CompletionVerdict:
    """The ledger's answer to one delivery of a completion.

    ``accepted``: the completion is the job's recorded result (state COMPLETED, or LATE with no points).
    ``duplicate``: the job already had one; this is the earlier verdict and nothing more was credited.
    """

    job_id: str
    accepted: bool
    reason: Reason | None
    points_micro: int
    state: JobState | None
    duplicate: bool = False

    @property
    def points(self) -> float:
        return from_micro(self.points_micro)


# ---------------------------------------------------------------------------------- verification steps


@dataclass(frozen=True)
class _Refusal:
    """Why a completion is not accepted. ``marks_job``: a registered miner delivered a bad result."""

    reason: Reason
    detail: str
    miner: str | None = None
    marks_job: bool = False


@dataclass
class _Attempt:
    """What verification has learned so far about one delivery."""

    signed: SignedCompletion
    received_at: float
    signer: str | None = None
    registered: bool = False
    banned: bool = False
    escrow: bool = False  # credit as ESCROW: the miner has not passed enough audits yet
    job: Job | None = None
    has_completion: bool = False
    spec: ModelSpec | None = None
    info: ObjectInfo | None = None
    standing: MinerStanding = field(default_factory=MinerStanding)
    registered_device: DeviceInfo | None = None

    @property
    def claim(self) -> Completion:
        return self.signed.completion

    @property
    def job_id(self) -> str:
        return self.signed.completion.job_id


class Ledger:
    """Verifies completions and keeps the append-only points ledger. Thread-safe: a session per call.

    Banned miners (``heurist.ledger.standing``) are refused: hellos and completions. With
    ``escrow_new_miners``, a miner with fewer than ``new_miner_audits`` passed audits is credited ESCROW
    entries (held until its audits pass) instead of JOB_CREDIT. It reads through ``reader`` (a
    ``LedgerReader`` on the same engine and clock) and records jobs through ``book`` (a ``JobBook``).
    """

    def __init__(self, engine: Engine, catalog: Catalog, store: ObjectStore,
                 clock: Callable[[], float] = time.time, *, escrow_new_miners: bool = False,
                 new_miner_audits: int = NEW_MINER_AUDITS, pins: WeightPins | None = None,
                 middleware: Sequence[LedgerMiddleware] = ()) -> None:
        """``pins`` None skips the weight attestation check (the auditor still makes it)."""
        self.pins = pins
        self.middleware = list(middleware)
        self.escrow_new_miners = escrow_new_miners
        self.new_miner_audits = new_miner_audits
        self.engine = engine
        self.catalog = catalog
        self.store = store
        self.clock = clock
        self.reader = LedgerReader(engine, clock)
        self.book = JobBook(engine, clock)
        self._sessions = session_factory(engine)

    # ---------------------------------------------------------------------------------- miners, failures

    def register_miner(self, signed: SignedHello) -> RegistrationVerdict:
        """Record a miner that proved it holds its key; later hellos refresh last_seen, models, device."""
        hello = signed.hello
        signer = recover_signer(hello.signing_payload(), signed.signature)
        if signer is None or signer.lower() != hello.miner.lower():
            log.warning("refused hello claiming %s: signature does not recover to it", hello.miner)
            return RegistrationVerdict(accepted=False, address=hello.miner, reason=Reason.BAD_SIGNATURE)
        with self._sessions() as session:
            if read_banned(session, signer):
                log.warning("refused hello from banned miner %s", signer)
                return RegistrationVerdict(accepted=False, address=signer, reason=Reason.BANNED)
        now = self.clock()
        values = {"address": signer, "first_seen": now, "last_seen": now, "models": list(hello.models),
                  "device": hello.device.model_dump(mode="json")}
        with session_scope(self._sessions) as session:
            self._upsert_miner(session, values)
        return RegistrationVerdict(accepted=True, address=signer)

    def _upsert_miner(self, session: Session, values: dict[str, Any]) -> None:
        """Insert or refresh in one statement, so two hellos at once cannot collide on the primary key."""
        dialect = self.engine.dialect.name
        if dialect not in ("sqlite", "postgresql"):
            existing = session.get(Miner, values["address"])
            if existing is None:
                session.add(Miner(**values))
            else:
                existing.last_seen, existing.models, existing.device = (
                    values["last_seen"], values["models"], values["device"])
            return
        insert = sqlite.insert if dialect == "sqlite" else postgresql.insert
        stmt = insert(Miner).values(**values)
        session.execute(stmt.on_conflict_do_update(
            index_elements=[Miner.address],
            set_={"last_seen": stmt.excluded.last_seen, "models": stmt.excluded.models,
                  "device": stmt.excluded.device},
        ))

    def record_failure(self, job_id: str, reason: str) -> None:
        """A miner's task raised: the job ends FAILED unless it already has a verdict (``JobBook``)."""
        self.book.record_failure(job_id, reason)

    # ------------------------------------------------------------------------------------ completions

    def record_completion(self, signed: SignedCompletion) -> CompletionVerdict:
        """Verify a signed completion and, if it holds, credit its job exactly once."""
        attempt = _Attempt(signed=signed, received_at=self.clock())
        refusal = self._verify(attempt)
        if refusal is None:
            verdict = self._accept(attempt)
            if not verdict.duplicate:
                self._after(lambda mw: mw.after_accept(self, self._accepted(attempt, verdict)))
            return verdict
        if refusal.reason is Reason.DUPLICATE:
            return self._duplicate(attempt)
        verdict = self._reject(attempt, refusal)
        self._after(lambda mw: mw.after_refuse(self, Refused(attempt.job_id, refusal.miner, refusal.reason)))
        return verdict

    def _after(self, call: Callable[[LedgerMiddleware], None]) -> None:
        """Run every middleware's hook; one that raises is logged, the committed verdict stands."""
        for mw in self.middleware:
            try:
                call(mw)
            except Exception:
                log.exception("ledger middleware %s failed", type(mw).__name__)

    @staticmethod
    def _accepted(a: _Attempt, verdict: CompletionVerdict) -> Accepted:
        assert a.job is not None and a.spec is not None and a.signer is not None
        return Accepted(job_id=a.job_id, miner=a.signer, spec=a.spec, params=PARAMS.validate_python(a.job.params),
                        claim=a.claim, wall_s=a.received_at - a.job.created_at,
                        registered_device=a.registered_device, standing=a.standing,
                        late=verdict.state is JobState.LATE)

    def _verify(self, attempt: _Attempt) -> _Refusal | None:
        """Run the checks in order, cheapest and least trusting first; the first refusal wins."""
        steps: Sequence[Callable[[_Attempt], _Refusal | None]] = (
            self._check_signature, self._load, self._check_signer, self._check_not_banned, self._check_job,
            self._check_model, self._check_weights, self._check_not_duplicate, self._check_output_exists,
            self._check_sha256, self._check_size,
        )
        for step in steps:
            refusal = step(attempt)
            if refusal is not None:
                return refusal
        return None

    def _check_signature(self, a: _Attempt) -> _Refusal | None:
        """Anyone can send a completion naming any miner: only the key's holder can sign it."""
        a.signer = recover_signer(a.claim.signing_payload(), a.signed.signature)
        if a.signer is None or a.signer.lower() != a.claim.miner.lower():
            return _Refusal(Reason.BAD_SIGNATURE, f"signature does not recover to {a.claim.miner}")
        return None

    def _load(self, a: _Attempt) -> _Refusal | None:
        """Read the signer, the job and whether it already has a completion, in one short session."""
        assert a.signer is not None
        with self._sessions() as session:
            miner = session.get(Miner, a.signer)
            a.registered = miner is not None
            if miner is not None:
                a.standing = read_standing(session, a.signer)
                a.registered_device = DeviceInfo.model_validate(miner.device) if miner.device else None
            a.banned = a.standing.banned
            a.escrow = a.registered and self.escrow_new_miners and a.standing.is_new(self.new_miner_audits)
            a.job = session.get(Job, a.job_id)
            a.has_completion = a.job is not None and session.get(CompletionRow, a.job_id) is not None
        return None

    def _check_signer(self, a: _Attempt) -> _Refusal | None:
        if not a.registered:
            return _Refusal(Reason.UNKNOWN_SIGNER, f"{a.signer} never sent a signed hello", miner=a.signer)
        return None

    def _check_not_banned(self, a: _Attempt) -> _Refusal | None:
        """A banned miner's work earns nothing and is void: the job stays queued for another miner (the
        ledger consumer sends it again: ``heurist.ledger.redispatch``)."""
        if a.banned:
            return _Refusal(Reason.BANNED, f"{a.signer} is banned after failed audits", miner=a.signer)
        return None

    def _check_job(self, a: _Attempt) -> _Refusal | None:
        if a.job is None:
            return _Refusal(Reason.UNKNOWN_JOB, "no such job", miner=a.signer)
        return None

    def _check_model(self, a: _Attempt) -> _Refusal | None:
        assert a.job is not None
        if a.claim.model_id != a.job.model_id:
            return _Refusal(Reason.WRONG_MODEL, f"job is for {a.job.model_id}, completion claims "
                            f"{a.claim.model_id}", miner=a.signer)
        a.spec = self.catalog.models.get(a.job.model_id)
        if a.spec is None:
            return _Refusal(Reason.UNKNOWN_MODEL, f"{a.job.model_id} is no longer in the catalog",
                            miner=a.signer)
        return None

    def _check_weights(self, a: _Attempt) -> _Refusal | None:
        """A miner that attests other files than the pinned ones ran a modified model: no credit."""
        assert a.spec is not None
        expected = self.pins.expected(a.spec) if self.pins is not None else None
        if expected is not None and a.claim.weights_sha256 != expected:
            return _Refusal(Reason.WEIGHTS_MISMATCH, f"attests weights {a.claim.weights_sha256[:12]}…, "
                            f"{a.spec.id} is pinned to {expected[:12]}…", miner=a.signer, marks_job=True)
        return None

    def _check_not_duplicate(self, a: _Attempt) -> _Refusal | None:
        """The fast path for redeliveries; the completions primary key is what guarantees it under races."""
        if a.has_completion:
            return _Refusal(Reason.DUPLICATE, "the job already has an accepted completion", miner=a.signer)
        return None

    def _check_output_exists(self, a: _Attempt) -> _Refusal | None:
        assert a.job is not None
        a.info = self.store.stat(a.job.output_key)
        if a.info is None:
            return _Refusal(Reason.OUTPUT_MISSING, f"no object at {a.job.output_key}", miner=a.signer,
                            marks_job=True)
        return None

    def _check_sha256(self, a: _Attempt) -> _Refusal | None:
        """The store's own checksum (verified on upload) when it kept one, else the hash of the bytes."""
        assert a.job is not None and a.info is not None
        stored = a.info.sha256 or self.store.sha256_of(a.job.output_key)
        stored = stored.lower() if stored else None
        if stored is None:
            return _Refusal(Reason.OUTPUT_MISSING, f"object at {a.job.output_key} vanished", miner=a.signer,
                            marks_job=True)
        if stored != a.claim.output_sha256:
            return _Refusal(Reason.SHA256_MISMATCH, f"stored object has sha256 {stored}, claimed "
                            f"{a.claim.output_sha256}", miner=a.signer, marks_job=True)
        return None

    def _check_size(self, a: _Attempt) -> _Refusal | None:
        assert a.info is not None
        if a.info.size != a.claim.output_bytes:
            return _Refusal(Reason.SIZE_MISMATCH, f"stored object has {a.info.size} bytes, claimed "
                            f"{a.claim.output_bytes}", miner=a.signer, marks_job=True)
        return None

    # ----------------------------------------------------------------------------------------- verdicts

    def _credit_micro(self, job: Job, spec: ModelSpec, claim: Completion) -> int:
        """Points from the job record's parameters, never the miner's; token claims are clamped to what
        the job allows (the audit checks exact counts)."""
        params = PARAMS.validate_python(job.params)
        if isinstance(params, ImageParams):
            return to_micro(job_points(spec, params))
        input_tokens = min(claim.input_tokens, len(params.prompt.encode("utf-8")) + PROMPT_TOKEN_SLACK)
        output_tokens = min(claim.output_tokens, params.max_tokens)
        return to_micro(job_points(spec, params, input_tokens, output_tokens))

    def _accept(self, a: _Attempt) -> CompletionVerdict:
        """Store the completion, credit the job, set its state: one transaction, or nothing."""
        assert a.job is not None and a.spec is not None and a.signer is not None
        late_by = a.received_at - a.job.deadline_at
        late = late_by > 0
        micro = 0 if late else self._credit_micro(a.job, a.spec, a.claim)
        state = JobState.LATE if late else JobState.COMPLETED
        try:
            with session_scope(self._sessions) as session:
                session.add(self._completion_row(a))
                session.flush()  # first statement: the primary key refuses a second completion here
                if not late:
                    session.add(PointsEntry(idempotency_key=f"job:{a.job_id}", miner_address=a.signer,
                                            job_id=a.job_id, amount_micro=micro,
                                            kind=EntryKind.ESCROW if a.escrow else EntryKind.JOB_CREDIT,
                                            created_at=a.received_at))
                session.execute(update(Job).where(Job.id == a.job_id).values(
                    state=state, miner_address=a.signer, finished_at=a.received_at,
                    error=f"delivered {late_by:.1f}s after the deadline: no points" if late else None))
        except IntegrityError:
            if not self._has_completion(a.job_id):
                raise
            return self._duplicate(a)
        if late:
            log.info("job %s late by %.1fs: output kept, no points", a.job_id, late_by)
        return CompletionVerdict(job_id=a.job_id, accepted=True, reason=Reason.LATE if late else None,
                                 points_micro=micro, state=state)

    def _completion_row(self, a: _Attempt) -> CompletionRow:
        c = a.claim
        assert a.signer is not None
        return CompletionRow(job_id=c.job_id, miner_address=a.signer, output_sha256=c.output_sha256,
                             output_bytes=c.output_bytes, content_type=c.content_type,
                             input_tokens=c.input_tokens, output_tokens=c.output_tokens,
                             timings=c.timings.model_dump(mode="json"), device=c.device.model_dump(mode="json"),
                             weights_sha256=c.weights_sha256, finished_at=c.finished_at,
                             signature=a.signed.signature, received_at=a.received_at)

    def _has_completion(self, job_id: str) -> bool:
        with self._sessions() as session:
            return session.get(CompletionRow, job_id) is not None

    def _duplicate(self, a: _Attempt) -> CompletionVerdict:
        """Answer a second delivery with the first verdict; record it, credit nothing."""
        with session_scope(self._sessions) as session:
            earlier = self._earlier_verdict(session, a.job_id)
            holder = session.scalar(select(CompletionRow.miner_address).where(CompletionRow.job_id == a.job_id))
            refusal = _Refusal(Reason.DUPLICATE, f"the job already has an accepted completion from {holder}",
                               miner=a.signer)
            session.add(self._rejection_row(a, refusal))
        log.info("duplicate completion for job %s from %s", a.job_id, a.signer)
        return replace(earlier, reason=Reason.DUPLICATE, duplicate=True)

    def _earlier_verdict(self, session: Session, job_id: str) -> CompletionVerdict:
        state = session.scalar(select(Job.state).where(Job.id == job_id))
        credited = session.scalar(select(func.sum(PointsEntry.amount_micro)).where(
            PointsEntry.job_id == job_id, PointsEntry.kind.in_((EntryKind.JOB_CREDIT, EntryKind.ESCROW))))
        return CompletionVerdict(job_id=job_id, accepted=state is not None and state.has_output,
                                 reason=Reason.LATE if state is JobState.LATE else None,
                                 points_micro=sum_micro(credited), state=state)

    def _rejection_row(self, a: _Attempt, refusal: _Refusal) -> Rejection:
        return Rejection(job_id=a.job_id[:ID_LEN], miner_address=refusal.miner, reason=refusal.reason,
                         detail=refusal.detail, received_at=a.received_at)

    def _reject(self, a: _Attempt, refusal: _Refusal) -> CompletionVerdict:
        """Record the refusal; a registered miner's bad result also ends the job REJECTED (unless another
        completion was accepted meanwhile). Forged or misaddressed completions leave the job untouched."""
        log.warning("rejected completion for job %s from %s: %s (%s)", a.job_id, refusal.miner or "?",
                    refusal.reason.value, refusal.detail)
        with session_scope(self._sessions) as session:
            session.add(self._rejection_row(a, refusal))
            if refusal.marks_job:
                session.execute(update(Job).where(Job.id == a.job_id, Job.state.in_(OPEN_STATES)).values(
                    state=JobState.REJECTED, miner_address=refusal.miner, finished_at=a.received_at,
                    error=f"{refusal.reason.value}: {refusal.detail}"))
            state = session.scalar(select(Job.state).where(Job.id == a.job_id)) if a.job is not None else None
        return CompletionVerdict(job_id=a.job_id, accepted=False, reason=refusal.reason, points_micro=0,
                                 state=state)


__all__ = [
    "MICRO",
    "CompletionVerdict",
    "Ledger",
    "Reason",
    "RegistrationVerdict",
]
