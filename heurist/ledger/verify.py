"""Verification of one signed completion: small checks in a fixed order, the first refusal wins.

The order is cheapest and least trusting first: the signature before any database read, the database
before object storage, so a forged or misaddressed completion costs no S3 round trip. No check writes to
the database or holds a transaction, so S3 never keeps a database lock (an inline output's PUT, started by the
last check, runs beside the credit, which waits for it at most 0.1 s: ``heurist.ledger.inline``); the writer
(``heurist.ledger.service.Ledger``) then records the verdict in one short transaction. The last check,
``_freeze_output``, is the one that writes, and only to storage: it makes an idempotent, content-addressed
copy of the verified bytes (``heurist.storage.freeze``), so nothing is credited that is not frozen.
``_check_not_duplicate`` is only the fast path for redeliveries: exactly once rests on the writer's unique
constraints.

A private job (``heurist.privacy``) goes through the same checks: its output is ciphertext, whose sha256 and
size are verified and frozen exactly as a public output's; it must be claimed as ``PRIVATE_CONTENT_TYPE``
(``_check_content_type``), and its token counts are bounded, not read (``heurist.ledger.token_counts``).

A check takes the ``Verifier`` (what checks may read) and the ``Attempt`` (what earlier checks learned), may
fill the attempt in, and returns a ``Refusal`` or None. Adding one is a function and a line in ``CHECKS``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session, sessionmaker

from heurist.catalog import Catalog, ModelSpec
from heurist.catalog.attestation import WeightPins
from heurist.catalog.tokenizer import ModelTokenizer
from heurist.jobs import Completion, DeviceInfo, JobState, SignedCompletion, output_content_type
from heurist.ledger.inline import PUT_WAIT_IN_CREDIT_S, PutPending, inline_info, store_inline
from heurist.ledger.standing import MinerStanding, read_signers
from heurist.ledger.tables import CompletionRow, Job, Reason
from heurist.ledger.token_counts import check_token_counts
from heurist.privacy.metering import PRIVATE_CONTENT_TYPE
from heurist.signing import DEFAULT_DOMAIN, Domain, message_signer
from heurist.storage.backend import ObjectInfo, ObjectStore
from heurist.storage.freeze import freeze


@dataclass(frozen=True)
class Refusal:
    """Why a completion is not accepted. ``marks_job``: a registered miner delivered a bad result."""

    reason: Reason
    detail: str
    miner: str | None = None
    marks_job: bool = False


@dataclass
class Attempt:
    """What verification has learned so far about one delivery."""

    signed: SignedCompletion
    received_at: float
    sender: str | None = None  # the broker user whose inbox brought it (None: embedded broker, trusted user)
    signer: str | None = None
    broker_user: str | None = None  # the broker user the signer's key is bound to
    registered: bool = False
    banned: bool = False
    escrow: bool = False  # credit as ESCROW: the miner has not passed enough audits yet
    job: Job | None = None
    has_completion: bool = False
    spec: ModelSpec | None = None
    info: ObjectInfo | None = None
    standing: MinerStanding = field(default_factory=MinerStanding)
    registered_device: DeviceInfo | None = None
    frozen_key: str | None = None  # where the verified bytes were copied (``heurist.storage.freeze``)
    stored: Future[str] | None = None  # an inline output's PUT to ``frozen_key``, still running (``inline``)
    counts: tuple[int, int] | None = None  # text: (input, output) tokens read from the stored answer

    @property
    def claim(self) -> Completion:
        return self.signed.completion

    def wait_stored(self, timeout: float | None = None) -> None:
        """Until an inline output's PUT is done; raises what it raised (StorageError: an outage, retried), or
        ``PutPending`` past ``timeout``. The credit calls it last inside its transaction: a job is never credited
        before its bytes are stored."""
        if self.stored is None:
            return
        try:
            self.stored.result(timeout)
        except TimeoutError:
            if not self.stored.done():
                raise PutPending(f"the PUT of {self.frozen_key} is still running after {timeout} s") from None
            self.stored.result()  # done since the wait gave up: its own result, or its own error (a timeout too)

    @property
    def put_pending(self) -> bool:
        """An inline output's PUT is still running."""
        return self.stored is not None and not self.stored.done()

    @property
    def job_id(self) -> str:
        return self.signed.completion.job_id

    @property
    def uploaded_at(self) -> float:
        """When the output was written, by the store's clock: what lateness is judged by.

        That is S3 ``LastModified`` from the HEAD in ``_check_output_exists``. The miner cannot move it,
        and it does not depend on when the ledger got round to the message (``received_at``): a flood
        that delays the ledger no longer makes honest work late. It has whole-second granularity (an HTTP
        date, floored), so the true upload time is in ``[uploaded_at, uploaded_at + 1)``. A job is late
        only if ``uploaded_at > deadline_at``, which gives the miner the benefit of under 1 s of doubt and
        never penalises it for the granularity. The PUT URL expires at the deadline anyway
        (``heurist.dispatch``), so the store itself refuses uploads after it. A store that reports no
        time, and an output sent inline (``heurist.ledger.inline``), fall back to the ledger's receipt time.
        """
        if self.info is not None and self.info.last_modified is not None:
            return self.info.last_modified
        return self.received_at


@dataclass(frozen=True)
class Verifier:
    """What the checks read: the ledger's read sessions (``read_factory``: each statement its own snapshot; the
    credit checks again under its locks and unique keys), the catalog, object storage, the weight pins (None
    skips the attestation check; the auditor still makes it) and whether new miners are credited in escrow."""

    sessions: sessionmaker[Session]
    catalog: Catalog
    store: ObjectStore
    pins: WeightPins | None
    escrow_new_miners: bool
    new_miner_audits: int
    domain: Domain = DEFAULT_DOMAIN
    tokenizers: Callable[[ModelSpec], ModelTokenizer | None] | None = None  # text models' (None: not recounted)
    loader: Callable[[Attempt], None] | None = None  # ``_load`` through a batch of deliveries (heurist.ledger.batch)

    def verify(self, attempt: Attempt) -> Refusal | None:
        """Run ``CHECKS`` in order; the first refusal wins."""
        for check in CHECKS:
            refusal = check(self, attempt)
            if refusal is not None:
                return refusal
        return None


def _check_signature(v: Verifier, a: Attempt) -> Refusal | None:
    """Anyone can send a completion naming any miner: only the key's holder can sign it."""
    a.signer = message_signer(a.claim, a.signed.signature, v.domain)
    if a.signer is None or a.signer.lower() != a.claim.miner.lower():
        return Refusal(Reason.BAD_SIGNATURE, f"signature does not recover to {a.claim.miner}")
    return None


def _load(v: Verifier, a: Attempt) -> Refusal | None:
    """Read the signer, the job and whether it already has a completion, in one short session (or in the
    session of a batch of deliveries: ``Verifier.loader``)."""
    assert a.signer is not None
    if v.loader is not None:
        v.loader(a)
        return None
    load_rows(v, [a])
    return None


def wait_all_stored(attempts: Sequence[Attempt]) -> None:
    """Inside a credit's transaction, just before it commits: every inline PUT of ``attempts`` done, all within one
    ``PUT_WAIT_IN_CREDIT_S``; past it ``PutPending`` (``Attempt.wait_stored``), so S3 never holds the lock long."""
    until = time.monotonic() + PUT_WAIT_IN_CREDIT_S
    for a in attempts:
        a.wait_stored(max(0.0, until - time.monotonic()))


# The jobs of a batch, each with whether it has a completion: one statement, built once.
_JOBS = select(Job, select(CompletionRow.job_id).where(CompletionRow.job_id == Job.id).exists()).where(
    Job.id.in_(bindparam("ids", expanding=True)))


def load_rows(v: Verifier, attempts: Sequence[Attempt]) -> None:
    """``_load`` for many attempts in one session and two statements: each signer with its standing
    (``standing.read_signers``), then the jobs, each with whether it has a completion."""
    with v.sessions() as session:
        signers = read_signers(session, {a.signer for a in attempts if a.signer is not None})
        rows = session.execute(_JOBS, {"ids": list({a.job_id for a in attempts})}).all()
    jobs = {job.id: job for job, _ in rows}
    done = {job.id for job, has in rows if has}
    for a in attempts:
        miner, standing = signers.get(a.signer or "", (None, MinerStanding()))
        a.registered = miner is not None
        if miner is not None:
            a.broker_user = miner.broker_user
            a.standing = standing
            a.registered_device = DeviceInfo.model_validate(miner.device) if miner.device else None
        a.banned = a.standing.banned
        a.escrow = a.registered and v.escrow_new_miners and a.standing.is_new(v.new_miner_audits)
        a.job = jobs.get(a.job_id)
        a.has_completion = a.job is not None and a.job_id in done


def _check_signer(v: Verifier, a: Attempt) -> Refusal | None:
    if not a.registered:
        return Refusal(Reason.UNKNOWN_SIGNER, f"{a.signer} never sent a signed hello", miner=a.signer)
    return None


def _check_sender(v: Verifier, a: Attempt) -> Refusal | None:
    """A completion counts only from the broker user (operator) the key is bound to: one relayed through
    another miner's inbox (a claim re-signed by someone else, a key lent out) earns nothing."""
    if a.sender is not None and a.sender != a.broker_user:
        return Refusal(Reason.WRONG_SENDER, f"key {a.signer} belongs to broker user {a.broker_user}, the "
                       f"completion came from {a.sender}", miner=a.signer)
    return None


def _check_not_banned(v: Verifier, a: Attempt) -> Refusal | None:
    """A banned miner's work earns nothing and is void: the job stays queued for another miner (the ledger
    consumer sends it again: ``heurist.ledger.redispatch``)."""
    if a.banned:
        return Refusal(Reason.BANNED, f"{a.signer} is banned after failed audits", miner=a.signer)
    return None


def _check_job(v: Verifier, a: Attempt) -> Refusal | None:
    if a.job is None:
        return Refusal(Reason.UNKNOWN_JOB, "no such job", miner=a.signer)
    return None


def _check_model(v: Verifier, a: Attempt) -> Refusal | None:
    assert a.job is not None
    if a.claim.model_id != a.job.model_id:
        return Refusal(Reason.WRONG_MODEL, f"job is for {a.job.model_id}, completion claims {a.claim.model_id}",
                       miner=a.signer)
    a.spec = v.catalog.models.get(a.job.model_id)
    if a.spec is None:
        return Refusal(Reason.UNKNOWN_MODEL, f"{a.job.model_id} is no longer in the catalog", miner=a.signer)
    return None


def _check_weights(v: Verifier, a: Attempt) -> Refusal | None:
    """A miner that attests other files than the pinned ones ran a modified model: no credit."""
    assert a.spec is not None
    expected = v.pins.expected(a.spec) if v.pins is not None else None
    if expected is not None and a.claim.weights_sha256 != expected:
        return Refusal(Reason.WEIGHTS_MISMATCH, f"attests weights {a.claim.weights_sha256[:12]}…, "
                       f"{a.spec.id} is pinned to {expected[:12]}…", miner=a.signer, marks_job=True)
    return None


def _check_not_duplicate(v: Verifier, a: Attempt) -> Refusal | None:
    """The fast path for redeliveries; the completions primary key is what guarantees it under races."""
    if a.has_completion:
        return Refusal(Reason.DUPLICATE, "the job already has an accepted completion", miner=a.signer)
    return None


def _check_open(v: Verifier, a: Attempt) -> Refusal | None:
    """Only a QUEUED job takes a completion: FAILED is final (the trusted side ended it and refunded it), so
    nothing is credited or delivered after the refund. Cheap, so it comes before any S3 round trip."""
    assert a.job is not None
    if a.job.state is not JobState.QUEUED:
        return Refusal(Reason.JOB_CLOSED, f"the job ended {a.job.state.value}: {a.job.error or 'no detail'}",
                       miner=a.signer)
    return None


def _check_content_type(v: Verifier, a: Attempt) -> Refusal | None:
    """A private job's output is ciphertext (``PRIVATE_CONTENT_TYPE``) and a public job's never is: a completion
    claiming the other kind is not the job's answer (a miner that ran a private job in the clear, or passes
    ciphertext off as a public answer). Cheap, before any S3 round trip."""
    assert a.job is not None
    private, claims_private = a.job.sealed is not None, a.claim.content_type == PRIVATE_CONTENT_TYPE
    if private != claims_private:
        what = "a private job's output must be" if private else "a public job's output must not be"
        return Refusal(Reason.WRONG_CONTENT_TYPE, f"{what} {PRIVATE_CONTENT_TYPE}; claimed {a.claim.content_type}",
                       miner=a.signer, marks_job=True)
    return None


def _check_output_exists(v: Verifier, a: Attempt) -> Refusal | None:
    """The uploaded object's HEAD, or what the ledger measured itself of an inline output
    (``heurist.ledger.inline``)."""
    assert a.job is not None
    a.info = inline_info(a.job.output_key, a.signed) or v.store.stat(a.job.output_key)
    if a.info is None:
        return Refusal(Reason.OUTPUT_MISSING, f"no object at {a.job.output_key}", miner=a.signer, marks_job=True)
    return None


def _check_sha256(v: Verifier, a: Attempt) -> Refusal | None:
    """The store's own checksum (verified on upload) when it kept one, else the hash of the bytes."""
    assert a.job is not None and a.info is not None
    stored = a.info.sha256 or v.store.sha256_of(a.job.output_key)
    stored = stored.lower() if stored else None
    if stored is None:
        return Refusal(Reason.OUTPUT_MISSING, f"object at {a.job.output_key} vanished", miner=a.signer,
                       marks_job=True)
    if stored != a.claim.output_sha256:
        return Refusal(Reason.SHA256_MISMATCH, f"stored object has sha256 {stored}, claimed "
                       f"{a.claim.output_sha256}", miner=a.signer, marks_job=True)
    return None


def _check_size(v: Verifier, a: Attempt) -> Refusal | None:
    assert a.info is not None
    if a.info.size != a.claim.output_bytes:
        return Refusal(Reason.SIZE_MISMATCH, f"stored object has {a.info.size} bytes, claimed "
                       f"{a.claim.output_bytes}", miner=a.signer, marks_job=True)
    return None


def _freeze_output(v: Verifier, a: Attempt) -> Refusal | None:
    """Copy exactly the verified bytes (conditional on the ETag the HEAD saw) to a key no URL can write.
    Clients and auditors read that copy, so an overwrite after the credit changes nothing they see. An
    overwrite racing between the HEAD and the copy is not frozen, and the completion is refused. An inline output
    is stored by ``_store_inline`` instead, after its last check."""
    assert a.job is not None and a.info is not None
    if a.signed.output is not None:
        return None
    a.frozen_key = freeze(v.store, a.info, a.claim.output_sha256)
    if a.frozen_key is None:
        return Refusal(Reason.OUTPUT_CHANGED, f"the object at {a.job.output_key} changed between verification "
                       "and freezing", miner=a.signer, marks_job=True)
    return None


def _store_inline(v: Verifier, a: Attempt) -> Refusal | None:
    """Start writing an inline output, the bytes the ledger hashed and checked, to its frozen key with one PUT
    (``heurist.ledger.inline``), as the type the ledger knows the job's output to be, never the claim's; the
    credit waits for it before it commits (``wait_all_stored``)."""
    if a.signed.output is None:
        return None
    assert a.job is not None and a.info is not None and a.spec is not None
    content_type = PRIVATE_CONTENT_TYPE if a.job.sealed is not None else output_content_type(a.spec.kind)
    a.frozen_key, a.stored = store_inline(v.store, a.info.key, a.signed.output, content_type)
    return None


Check = Callable[[Verifier, Attempt], Refusal | None]

# The order is the contract: each check may rely on what the ones before it filled in.
CHECKS: tuple[Check, ...] = (
    _check_signature,
    _load,
    _check_signer,
    _check_sender,
    _check_not_banned,
    _check_job,
    _check_model,
    _check_weights,
    _check_not_duplicate,
    _check_open,
    _check_content_type,  # private jobs: ciphertext, and only there (``heurist.privacy.metering``)
    _check_output_exists,
    _check_sha256,
    _check_size,
    _freeze_output,  # only verified bytes are frozen, and nothing is credited unfrozen
    check_token_counts,  # text: counts read from the frozen answer or the inline bytes (heurist.ledger.token_counts)
    _store_inline,  # last: a refused inline output costs no PUT and leaves nothing in storage
)


__all__ = ["CHECKS", "Attempt", "Check", "Refusal", "Verifier", "load_rows", "wait_all_stored"]
