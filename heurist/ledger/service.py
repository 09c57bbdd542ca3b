"""The trusted ledger: verify miners' signed completions and credit points exactly once per job.

Verification (``heurist.ledger.verify``) reads first (signature, miner, job, stored object) without holding a write
transaction, so S3 round trips never keep a database lock (an inline output's PUT runs beside the credit, which
waits for it at most 0.1 s, else lets go and waits holding nothing: ``heurist.ledger.inline``); then this module
writes the verdict in one short transaction: accepted, rejected, or a duplicate answered with the first verdict.
Exactly once rests on unique constraints, not on the earlier read: ``completions.job_id`` is the primary key (one
accepted completion per job) and ``points_entries.idempotency_key`` is unique. Two ledger workers racing on the same
job both pass the reads; the second insert fails, rolls back, and is answered with the first verdict.

Lateness is judged by the store's upload time of the output (``Attempt.uploaded_at``), never by when the
ledger processed the message; an output sent inline (``heurist.ledger.inline``) by when the ledger first received
it, which a retry after an outage keeps. The credited bytes are the frozen copy the checks made.

Only the trusted side ends a job without a result (docs/job-states.md): a miner's failure report or bad result
is recorded against that miner and the job stays QUEUED for another miner (the ledger consumer re-sends it at
once: ``heurist.ledger.redispatch.ResendOnReport``); FAILED is final, so nothing is credited or delivered after
the refund it brings.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import Engine, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from heurist.catalog import Catalog, ModelSpec
from heurist.catalog.attestation import WeightPins
from heurist.catalog.tokenizer import TokenizerBook
from heurist.db.base import ID_LEN
from heurist.db.engine import read_factory, session_factory, session_scope
from heurist.jobs import ImageParams, JobState, SignedCompletion, SignedFailure, SignedHello
from heurist.ledger.batch import CompletionBatches
from heurist.ledger.failures import log_refused, record_report, refuse_failure
from heurist.ledger.inline import PutPending
from heurist.ledger.jobbook import JobBook
from heurist.ledger.locks import share_miners
from heurist.ledger.middleware import Accepted, LedgerMiddleware, Refused
from heurist.ledger.reader import PARAMS, JobView, LedgerReader, job_view, sum_micro
from heurist.ledger.registration import RegistrationVerdict, register_miner
from heurist.ledger.standing import NEW_MINER_AUDITS, release_key
from heurist.ledger.tables import CompletionRow, EntryKind, Job, PointsEntry, Reason, Rejection
from heurist.ledger.verify import Attempt, Refusal, Verifier, wait_all_stored
from heurist.outbox.relay import OutboxRelay
from heurist.points import MICRO, from_micro, job_points, to_micro
from heurist.privacy.keyrelease.registry import record_registration
from heurist.privacy.messages import SignedRegistration
from heurist.signing import DEFAULT_DOMAIN, Domain
from heurist.storage.backend import ObjectStore

log = logging.getLogger(__name__)



# ---------------------------------------------------------------------------------------------- results


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
    view: JobView | None = None  # a credit's: the job as committed (what a read of its row returns)

    @property
    def points(self) -> float:
        return from_micro(self.points_micro)

    def report(self) -> dict[str, Any]:
        """The verdict as the completion task returns it (JSON: the reason as its string value)."""
        return {"job_id": self.job_id, "accepted": self.accepted, "duplicate": self.duplicate,
                "reason": str(self.reason), "points": self.points}


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
                 middleware: Sequence[LedgerMiddleware] = (), domain: Domain = DEFAULT_DOMAIN,
                 tokenizers: TokenizerBook | None = None) -> None:
        """``pins`` None skips the weight attestation check (the auditor still makes it); ``domain``: the
        network's EIP-712 domain, which every signature it checks must be made for (``heurist.signing``)."""
        self.domain = domain
        self.tokenizers = tokenizers  # text models' tokenizers: counts recounted (heurist.ledger.token_counts)
        self.pins = pins
        self.middleware = list(middleware)
        self.escrow_new_miners = escrow_new_miners
        self.new_miner_audits = new_miner_audits
        self.engine = engine
        self.catalog = catalog
        self.store = store
        self.clock = clock
        self.outbox: OutboxRelay | None = None  # publishes what the middleware decided in a credit's transaction
        self.batches: CompletionBatches | None = None  # reads and credits of many threads together (``batch``)
        self.reader = LedgerReader(engine, clock)
        self.book = JobBook(engine, clock)
        self._sessions = session_factory(engine)
        self._reads = read_factory(engine)  # verification's loads: no transaction on PostgreSQL

    def batch(self, max_size: int, window_s: float) -> None:
        """From now on, completions delivered from many threads at once share their database reads and their
        credit transaction, up to ``max_size`` together (``heurist.ledger.batch``); each thread still gets its
        own verdict or exception. ``max_size`` 1: each alone, as before."""
        if self.batches is not None:
            self.batches.close()
        self.batches = CompletionBatches(self, max_size, window_s) if max_size > 1 else None

    # ---------------------------------------------------------------------------------- miners, failures

    def register_miner(self, signed: SignedHello, sender: str | None = None) -> RegistrationVerdict:
        """Record a miner that proved it holds its key (``heurist.ledger.registration``)."""
        return register_miner(self.engine, self._sessions, self.clock, signed, sender, self.domain)

    def register_privacy(self, signed: SignedRegistration, sender: str | None = None, *, policy_version: str,
                         tee_verifier: str | None = None) -> str | None:
        """Record a privacy miner's signed registration (``heurist.privacy.keyrelease.registry``); the refusal
        reason (logged, not stored) or None."""
        return record_registration(self.engine, signed, sender, domain=self.domain, policy_version=policy_version,
                                   tee_verifier=tee_verifier, now=self.clock())

    def record_failure(self, job_id: str, reason: str) -> None:
        """The trusted side ends a job without a result (an operator, a redispatch that cannot send it): FAILED
        unless it already has a verdict (``JobBook.record_failure``). Miners' reports never come here."""
        self.book.record_failure(job_id, reason)

    def report_failure(self, signed: SignedFailure, sender: str | None = None) -> bool:
        """A miner's signed failure report: recorded against it (True) only if signed by a registered, unbanned
        miner, sent by its broker user, about a job still open (``heurist.ledger.failures``). It never ends the
        job: the middleware gives it to another miner while its re-send budget lasts."""
        refusal = refuse_failure(self._sessions, signed, sender, self.domain)
        if refusal is None and not record_report(self._sessions, signed, self.clock()):
            refusal = Reason.JOB_CLOSED
        if refusal is not None:
            log_refused(signed, refusal)
            return False
        self._after(lambda mw: mw.after_report(self, signed.failure.job_id, signed.failure.miner))
        return True

    # ------------------------------------------------------------------------------------ completions

    def record_completion(self, signed: SignedCompletion, sender: str | None = None, *,
                          received_at: float | None = None) -> CompletionVerdict:
        """Verify a signed completion and, if it holds, credit its job exactly once. ``received_at``: when the
        ledger first received it (a retry's, ``heurist.access.senders.received_at``); default now."""
        attempt = Attempt(signed=signed, received_at=self.clock() if received_at is None else received_at,
                          sender=sender)
        refusal = self._verifier().verify(attempt)
        if refusal is None:
            accepted = self._accepted(attempt)
            verdict = self._accept(attempt, accepted)
            if verdict.accepted and not verdict.duplicate:
                accepted.view = verdict.view
                self._after(lambda mw: mw.after_accept(self, accepted))  # first: a client waits on its notice
                self._publish_now(accepted.outbox_keys)
            return verdict
        if refusal.reason is Reason.DUPLICATE:
            return self._duplicate(attempt)
        verdict = self._reject(attempt, refusal)
        still_open = verdict.state is JobState.QUEUED
        self._after(lambda mw: mw.after_refuse(self, Refused(attempt.job_id, refusal.miner, refusal.reason,
                                                             marks_job=refusal.marks_job and still_open)))
        return verdict

    def _publish_now(self, keys: list[str]) -> None:
        """The outbox's fast path after a credit committed; whatever fails here the relay's drain sends later,
        so an error is logged, never raised (the credit must not look unprocessed)."""
        for key in keys if self.outbox is not None else ():
            try:
                if self.batches is not None:
                    self.batches.publish(key)  # with the keys of other credits, in one lease and one mark
                else:
                    self.outbox.send(key)  # type: ignore[union-attr]
            except Exception:
                log.exception("outbox %s: not published now; the relay's drain will", key)

    def _verifier(self) -> Verifier:
        """What the checks read, taken from this ledger's attributes at each delivery, so those stay the one
        source (assignable, as before) and ``heurist.ledger.verify`` never needs the ledger itself."""
        return Verifier(self._reads, self.catalog, self.store, self.pins, self.escrow_new_miners,
                        self.new_miner_audits, self.domain, self.tokenizers,
                        loader=self.batches.load if self.batches is not None else None)

    def _after(self, call: Callable[[LedgerMiddleware], None]) -> None:
        """Run every middleware's hook; one that raises is logged, the committed verdict stands."""
        for mw in self.middleware:
            try:
                call(mw)
            except Exception:
                log.exception("ledger middleware %s failed", type(mw).__name__)

    @staticmethod
    def _accepted(a: Attempt) -> Accepted:
        """What the middleware sees of a completion about to be credited (late: uploaded past the deadline)."""
        assert a.job is not None and a.spec is not None and a.signer is not None
        return Accepted(job_id=a.job_id, miner=a.signer, spec=a.spec, params=PARAMS.validate_python(a.job.params),
                        claim=a.claim, wall_s=a.received_at - a.job.created_at,
                        registered_device=a.registered_device, standing=a.standing,
                        late=a.uploaded_at > a.job.deadline_at, at=a.received_at, notify_key=a.job.notify_key)

    # ----------------------------------------------------------------------------------------- verdicts

    def _credit_micro(self, job: Job, spec: ModelSpec, counts: tuple[int, int] | None) -> int:
        """Points from the job record's parameters, never the miner's, and for text from the token counts
        read from the stored answer (``heurist.ledger.token_counts``), never the claimed ones."""
        params = PARAMS.validate_python(job.params)
        if isinstance(params, ImageParams):
            return to_micro(job_points(spec, params))
        assert counts is not None, "a text completion is accepted only after its counts were read"
        return to_micro(job_points(spec, params, *counts))

    def _accept(self, a: Attempt, accepted: Accepted) -> CompletionVerdict:
        """Credit an accepted completion: with others in one transaction when batching
        (``heurist.ledger.batch``), else alone."""
        credit = self.batches.credit if self.batches is not None else self._accept_alone
        standing = accepted.standing
        try:
            return credit(a, accepted)
        except PutPending:  # its PUT outlasted what a transaction waits: waited for here, holding nothing
            a.wait_stored()
            accepted.standing, accepted.outbox_keys[:] = standing, []  # undo what the rolled-back middleware noted
            return credit(a, accepted)

    def _accept_alone(self, a: Attempt, accepted: Accepted) -> CompletionVerdict:
        """Store the completion, credit the job, set its state, and what the middleware decides with it (an
        audit sample, a metrics flag: ``within_accept``): one transaction, or nothing."""
        plan = self._credit_plan(a, accepted)
        try:
            with session_scope(self._sessions) as session:
                session.add(self._completion_row(a))
                session.flush()  # first statement: the primary key refuses a second completion here
                self._unheld(session, [a])
                entry = self._points_entry(a, plan)
                if entry is not None:
                    session.add(entry)
                end = self._job_end(a, plan)
                ended = session.execute(update(Job).where(Job.id == a.job_id, Job.state == JobState.QUEUED).values(
                    state=end["b_state"], miner_address=end["b_miner"], finished_at=end["b_finished"],
                    error=end["b_error"]))
                if ended.rowcount != 1:  # type: ignore[attr-defined]
                    raise _Closed  # the trusted side ended it since the checks read it: roll all of it back
                for mw in self.middleware:  # a hook that raises rolls the credit back: it is retried whole
                    mw.within_accept(session, accepted)
                wait_all_stored([a])  # an inline output's PUT, run beside: stored before it commits
        except IntegrityError:
            if not self._has_completion(a.job_id):
                raise
            return self._duplicate(a)
        except _Closed:
            return self._reject(a, Refusal(Reason.JOB_CLOSED, "the job ended while this completion was checked",
                                           miner=a.signer))
        return self._credited(a, plan)

    def _credit_plan(self, a: Attempt, accepted: Accepted) -> _Plan:
        """What crediting ``a`` writes: late (uploaded past the deadline, by the store's clock, never the ledger's
        backlog; an inline output: first received past it) gets no points."""
        assert a.job is not None and a.spec is not None and a.signer is not None
        late_by = a.uploaded_at - a.job.deadline_at
        micro = 0 if accepted.late else self._credit_micro(a.job, a.spec, a.counts)
        return _Plan(late=accepted.late, late_by=late_by, micro=micro,
                     state=JobState.LATE if accepted.late else JobState.COMPLETED)

    @staticmethod
    def _unheld(session: Session, attempts: Sequence[Attempt]) -> None:
        """Inside the credit's transaction, after its first write: a miner read as new whose escrow has been released
        since is credited as available. Its row is held shared (``heurist.ledger.locks``) until the credit commits,
        so the release either waits for it (and moves it with the rest) or came first and is seen here."""
        held = {a.signer for a in attempts if a.escrow and a.signer is not None}
        if not held:
            return
        share_miners(session, held)
        released = set(session.scalars(select(PointsEntry.miner_address).where(
            PointsEntry.idempotency_key.in_([release_key(miner) for miner in held]))))
        for a in attempts:
            a.escrow = a.escrow and a.signer not in released

    @staticmethod
    def _points_entry(a: Attempt, plan: _Plan) -> PointsEntry | None:
        if plan.late:
            return None
        assert a.signer is not None
        return PointsEntry(idempotency_key=f"job:{a.job_id}", miner_address=a.signer, job_id=a.job_id,
                           amount_micro=plan.micro, kind=EntryKind.ESCROW if a.escrow else EntryKind.JOB_CREDIT,
                           created_at=a.received_at)

    @staticmethod
    def _job_end(a: Attempt, plan: _Plan) -> dict[str, Any]:
        """The job's new state, miner, end time and error, as the bind parameters of ``heurist.ledger.batch``."""
        clock = ("the store's clock" if a.info is not None and a.info.last_modified is not None
                 else "the ledger's first receipt")  # an inline output (heurist.ledger.inline)
        error = f"delivered {plan.late_by:.0f}s after the deadline ({clock}): no points" if plan.late else None
        return {"b_state": plan.state, "b_miner": a.signer, "b_finished": a.received_at, "b_error": error}

    @staticmethod
    def _credited(a: Attempt, plan: _Plan) -> CompletionVerdict:
        """The verdict of a credit just committed, with the job as a read of its row now returns it: the row as
        verification loaded it, ended as ``_job_end`` wrote, with the completion row and the points entry (the
        job's only one: nothing credits a job before its completion). Only a re-send by the sweep in the moment
        between that load and the credit leaves ``resends`` and ``deadline_at`` one re-send behind: the sweep
        changes nothing else of a queued job, and no client reads either of them."""
        if plan.late:
            log.info("job %s uploaded %.0fs late: output kept (frozen), no points", a.job_id, plan.late_by)
        assert a.job is not None
        end = Ledger._job_end(a, plan)
        view = replace(job_view(a.job, Ledger._completion_row(a), plan.micro), state=end["b_state"],
                       miner=end["b_miner"], finished_at=end["b_finished"], error=end["b_error"])
        return CompletionVerdict(job_id=a.job_id, accepted=True, reason=Reason.LATE if plan.late else None,
                                 points_micro=plan.micro, state=plan.state, view=view)

    @staticmethod
    def _completion_row(a: Attempt) -> CompletionRow:
        c = a.claim
        assert a.signer is not None
        return CompletionRow(job_id=c.job_id, miner_address=a.signer, output_sha256=c.output_sha256,
                             output_bytes=c.output_bytes, content_type=c.content_type,
                             input_tokens=c.input_tokens, output_tokens=c.output_tokens,
                             timings=c.timings.model_dump(mode="json"), device=c.device.model_dump(mode="json"),
                             weights_sha256=c.weights_sha256, finished_at=c.finished_at,
                             signature=a.signed.signature, received_at=a.received_at,
                             frozen_key=a.frozen_key, uploaded_at=a.uploaded_at)

    def _has_completion(self, job_id: str) -> bool:
        with self._sessions() as session:
            return session.get(CompletionRow, job_id) is not None

    def _duplicate(self, a: Attempt) -> CompletionVerdict:
        """Answer a second delivery with the first verdict; record it, credit nothing."""
        with session_scope(self._sessions) as session:
            earlier = self._earlier_verdict(session, a.job_id)
            holder = session.scalar(select(CompletionRow.miner_address).where(CompletionRow.job_id == a.job_id))
            refusal = Refusal(Reason.DUPLICATE, f"the job already has an accepted completion from {holder}",
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

    def _rejection_row(self, a: Attempt, refusal: Refusal) -> Rejection:
        return Rejection(job_id=a.job_id[:ID_LEN], miner_address=refusal.miner, reason=refusal.reason,
                         detail=refusal.detail, received_at=a.received_at)

    def _reject(self, a: Attempt, refusal: Refusal) -> CompletionVerdict:
        """Record the refusal, against the miner that sent it; the job's state never changes. A registered
        miner's bad result (``marks_job``) makes the job worth another miner's try (the middleware re-sends
        it): whether it came from the miner that held the job or from one that read its id, the application's
        job is not ended by it."""
        log.warning("rejected completion for job %s from %s: %s (%s)", a.job_id, refusal.miner or "?",
                    refusal.reason.value, refusal.detail)
        with session_scope(self._sessions) as session:
            session.add(self._rejection_row(a, refusal))
            state = session.scalar(select(Job.state).where(Job.id == a.job_id)) if a.job is not None else None
        return CompletionVerdict(job_id=a.job_id, accepted=False, reason=refusal.reason, points_micro=0,
                                 state=state)


class _Closed(Exception):
    """The job left QUEUED between verification and the write: the write is rolled back."""


@dataclass(frozen=True)
class _Plan:
    """What crediting one accepted completion writes."""

    late: bool
    late_by: float
    micro: int
    state: JobState


__all__ = ["MICRO", "CompletionVerdict", "Ledger", "Reason", "RegistrationVerdict"]
