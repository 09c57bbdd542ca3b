"""Errors users see. Each message names what is wrong and how to fix it; the CLI prints them, no traceback."""


class HeuristError(Exception):
    """Base of every error meant for a person to read."""


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


class JobTimeoutError(HeuristError):
    """A job did not finish within the time the caller waited; ``job_ids`` are the unfinished ones."""

    def __init__(self, message: str, job_ids: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.job_ids = job_ids


class ConfigError(HeuristError):
    """A setting is missing or malformed."""


class StorageError(HeuristError):
    """The S3 object store is unreachable, refused our credentials, or failed a request."""


class JobRefused(HeuristError):
    """A miner will not run a job message (``workers.miner.admission``); ``reason`` is a short code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail
