"""A privacy miner's part of a private job (issue 16): open it before the pipeline runs, seal what it made.

A private job's message carries neutral clear parameters (the prompt is ``PRIVATE_PROMPT``; only what is billed
is real) and, in ``job.private``, the real ones encrypted under a per-job data key split among the key-release
nodes. ``open`` gathers t shares (``heurist.privacy.shares``), decrypts the parameters, and refuses them unless
they are billed exactly as the clear ones (``heurist.privacy.metering.check``: a client cannot buy 512x512 and
ask for 1024x1024) and are within the model's catalog limits (the checks admission ran on the clear copy).
``seal`` encrypts the output under the same key, so only the client, and whoever the job's ACC admits, reads it.

Every failure is a ``PrivacyError``, reported as a signed failure "privacy: ..." that names no key, prompt or
output. The plaintext lives in this process's memory only: it is never logged, streamed or uploaded.
"""

from __future__ import annotations

from dataclasses import dataclass

import requests
from pydantic import TypeAdapter, ValidationError

from heurist.catalog import ModelSpec
from heurist.errors import InvalidJobError
from heurist.identity import Wallet
from heurist.jobs import ImageParams, JobMessage, JobParams, TextParams
from heurist.privacy.envelope import PrivacyError, encrypt_output, open_params
from heurist.privacy.messages import SignedRegistration
from heurist.privacy.metering import check
from heurist.privacy.shares import ShareGatherer, registration
from heurist.settings import Settings
from heurist.submission import image_params, text_params

_PARAMS: TypeAdapter[ImageParams | TextParams] = TypeAdapter(JobParams)  # type: ignore[arg-type]


@dataclass
class PrivateJobs:
    """What a runtime needs to run private jobs: the way to their keys."""

    gatherer: ShareGatherer
    policy_version: str

    @classmethod
    def from_settings(cls, settings: Settings, wallet: Wallet,
                      session: requests.Session | None = None) -> PrivateJobs:
        """Refuse to start a privacy miner that could not get a single key (no key-release nodes configured)."""
        return cls(ShareGatherer.from_settings(settings, wallet, session), settings.privacy_policy_version)

    def registration(self) -> SignedRegistration:
        """This miner's signed registration (sent to the ledger at start, after the hello)."""
        return registration(self.gatherer.wallet, self.policy_version, self.gatherer.domain)

    def open(self, job: JobMessage, spec: ModelSpec) -> tuple[bytes, JobMessage]:
        """The job's data key and a copy of ``job`` with its real parameters (never to be logged)."""
        if job.private is None:
            raise PrivacyError(f"job {job.job_id} is not private")
        key = self.gatherer.key_for(job.job_id, job.private, job.model_id)
        real = _parse(open_params(key, job.private, job_id=job.job_id, model_id=job.model_id), job.job_id)
        check(job.params, real)
        _within_limits(spec, real, job.job_id)
        return key, job.model_copy(update={"params": real})

    @staticmethod
    def seal(key: bytes, job_id: str, data: bytes) -> bytes:
        """The output as the client will fetch it: ciphertext bound to ``job_id``."""
        return encrypt_output(key, job_id, data)


def _parse(plain: bytes, job_id: str) -> JobParams:
    """The decrypted parameters; an error names the field, never its value (which is the secret)."""
    try:
        return _PARAMS.validate_json(plain)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "params"
        raise PrivacyError(f"job {job_id}: the decrypted parameters are malformed ({where}: {first['msg']})") \
            from None


def _within_limits(spec: ModelSpec, p: JobParams, job_id: str) -> None:
    """The catalog's limits on the real parameters: admission saw only the clear copy."""
    try:
        if isinstance(p, ImageParams):
            image_params(spec, p.prompt, negative_prompt=p.negative_prompt, width=p.width, height=p.height,
                         steps=p.steps, guidance=p.guidance, seed=p.seed)
        else:
            text_params(spec, p.prompt, max_tokens=p.max_tokens, temperature=p.temperature, seed=p.seed)
    except InvalidJobError as err:
        raise PrivacyError(f"job {job_id}: the decrypted parameters break the model's limits ({err})") from None


__all__ = ["PrivateJobs"]
