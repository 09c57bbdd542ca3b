"""Errors users see. Each message names what is wrong and how to fix it; the CLI prints them, no traceback.

A job that ends without a result says why in two voices. The recorded error (``jobs.error``, for operators) keeps
everything: the ledger's reason and the last report a miner sent, e.g. "storage: upload to http://…/outputs/…
failed after 9 attempts over 40.2 s (ConnectionError)". What an API caller reads (``public_failure``) is chosen
from a fixed list by the report's ``FailureKind``, the word before its first colon: it names the cause (storage,
broker, time limit) and never a host, URL, bucket, broker user or miner. The kind is a claim of an untrusted
miner, so the public text says "miners reported …"; it changes nothing else (a report is re-sent alike whatever
its kind, docs/job-states.md).
"""

from __future__ import annotations

from enum import StrEnum


class FailureKind(StrEnum):
    """Why a job failed on a miner, when the fault was not the job's: the prefix of a failure report's text
    (``Failure.error``, "storage: …"). A prefix rather than a signed field of ``Failure``: the ledger treats every
    report alike (recorded against its signer, the job re-sent within budget), so the kind is for people only,
    and a text prefix keeps the EIP-712 type every miner and ledger already sign and verify."""

    STORAGE = "storage"  # the object store did not take the output within the job's time
    BROKER = "broker"  # the broker went away while the job ran
    TIME_LIMIT = "time limit"  # the model had not finished by the job's soft time limit (heurist.time_limits)
    HARD_TIME_LIMIT = "hard time limit"  # a model call still running at the hard limit: abandoned
    PRIVACY = "privacy"  # a private job: its key not gathered, or it did not decrypt or was billed otherwise

    @classmethod
    def of(cls, text: str | None) -> FailureKind | None:
        """The kind a report's text starts with ("storage: …"), or None (a job's own error, "RuntimeError: …")."""
        head = (text or "").split(":", 1)[0].strip()
        return cls(head) if head in cls._value2member_map_ else None

    @staticmethod
    def text(error: BaseException, kind: FailureKind | None = None) -> str:
        """How a miner reports ``error``: "<kind>: <message>" for an infrastructure or time-limit error (its
        ``kind``, or the one given), else "<Type>: <message>", the job's own error."""
        kind = kind or getattr(error, "kind", None)
        return f"{kind}: {error}" if kind is not None else f"{type(error).__name__}: {error}"


class HeuristError(Exception):
    """Base of every error meant for a person to read.

    ``public`` is what an API caller may read when the message itself names internals (a miner's address, a
    host, a bucket, an internal URL): the gateway answers with it and logs the full message. None: the message
    names nothing internal and is shown as it is."""

    public: str | None = None
    kind: FailureKind | None = None  # set on infrastructure and time-limit errors: the prefix of a miner's report

    def __init__(self, message: str = "", *, public: str | None = None) -> None:
        super().__init__(message)
        if public is not None:
            self.public = public


class CatalogError(HeuristError):
    """The catalog file has a bad entry."""


class UnknownModelError(HeuristError):
    """A job or miner named a model the catalog does not have."""


class InvalidJobError(HeuristError):
    """A submission breaks its model's limits; nothing was enqueued."""


class ModelIntegrityError(HeuristError):
    """A model file's sha256 does not match the catalog: refused before loading."""


class ModelNotPresentError(ModelIntegrityError):
    """A model's files are not on this machine (nothing to verify or load)."""


class JobFailedError(HeuristError):
    """A job ended without a credited result."""


# What an API caller reads about a job that ended without a result. The recorded error names the miner, its
# report and the ledger's check, which ``JobStatus`` promises never to show.
_PUBLIC_ENDINGS = {
    "rejected": "the result a miner returned failed the ledger's verification",
    "failed": "no miner delivered a verified result before the job's deadline",
}


# What an API caller reads about the last report's kind: the cause, never a host, URL or miner.
_PUBLIC_CAUSES = {
    FailureKind.STORAGE: "the output store could not be reached",
    FailureKind.BROKER: "the broker could not be reached",
    FailureKind.TIME_LIMIT: "the model did not finish within the job's time limit",
    FailureKind.HARD_TIME_LIMIT: "the model hung past the job's hard time limit",
    FailureKind.PRIVACY: "the private job's key was not released to them, or its ciphertext or parameters were refused",
}
LAST_REPORT = "; last report: "  # how the ledger's sweep appends a miner's last report to a failed job's error


def last_report(error: str | None) -> str | None:
    """The miner's report a failed job's recorded error ends with (``heurist.ledger.sweep.never_completed``)."""
    if error is None or LAST_REPORT not in error:
        return None
    return error.rsplit(LAST_REPORT, 1)[1]


def public_failure(job_id: str, state: str, error: str | None = None) -> str:
    """A failed job's message for API callers: its state, and the kind of failure miners reported in the
    recorded ``error`` (storage, broker, time limit), nothing about who ran it or where."""
    ending = f"job {job_id} ended {state}: {_PUBLIC_ENDINGS.get(str(state), 'no verified result')}"
    kind = FailureKind.of(last_report(error))
    return ending if kind is None else f"{ending}; miners reported: {_PUBLIC_CAUSES[kind]}"


class JobTimeoutError(HeuristError):
    """A job did not finish within the time the caller waited; ``job_ids`` are the unfinished ones."""

    def __init__(self, message: str, job_ids: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.job_ids = job_ids


class ConfigError(HeuristError):
    """A setting is missing or malformed (the operator's to fix; API callers read ``public``)."""

    public = "the service is misconfigured; its operator has been told"


class StorageError(HeuristError):
    """The S3 object store is unreachable, refused our credentials, or failed a request. Its message names the
    endpoint and bucket, for the operator; API callers read ``public``."""

    public = "the output store is unavailable; try again in a minute"
    kind = FailureKind.STORAGE


class TimeLimitExceeded(HeuristError):
    """A job ran past its time limit (``heurist.time_limits``): it stopped at a step boundary, or never ran."""

    kind = FailureKind.TIME_LIMIT


class HardTimeLimitExceeded(TimeLimitExceeded):
    """A model call was still running at the job's hard time limit: it was abandoned (``workers.miner.watchdog``)."""

    kind = FailureKind.HARD_TIME_LIMIT


class JobRefused(HeuristError):
    """A miner will not run a job message (``workers.miner.admission``); ``reason`` is a short code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail
