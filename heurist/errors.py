"""Errors users see. Each message names what is wrong and how to fix it; the CLI prints them, no traceback."""


class HeuristError(Exception):
    """Base of every error meant for a person to read.

    ``public`` is what an API caller may read when the message itself names internals (a miner's address, a
    host, a bucket, an internal URL): the gateway answers with it and logs the full message. None: the message
    names nothing internal and is shown as it is."""

    public: str | None = None

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


def public_failure(job_id: str, state: str) -> str:
    """A failed job's message for API callers: its state, and nothing about who ran it or where."""
    return f"job {job_id} ended {state}: {_PUBLIC_ENDINGS.get(str(state), 'no verified result')}"


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


class JobRefused(HeuristError):
    """A miner will not run a job message (``workers.miner.admission``); ``reason`` is a short code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail
