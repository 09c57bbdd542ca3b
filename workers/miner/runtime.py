"""The miner runtime: pipelines loaded once at start, one job at a time, output PUT, completion signed.

A message is admitted first (``workers.miner.admission``: the dispatcher's signature, the deadline, the
model, the catalog's limits, the store); a job that then raises is reported as a signed ``Failure``."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import requests
from kombu.pools import ProducerPool

from heurist.errors import ConfigError, UnknownModelError
from heurist.identity import Wallet
from heurist.jobs import (
    FAILURE_ERROR_CHARS,
    Completion,
    DeviceInfo,
    Failure,
    JobMessage,
    SignedCompletion,
    SignedFailure,
    Timings,
)
from heurist.signing import DEFAULT_DOMAIN, Domain, sign_failure, sign_message
from heurist.storage.presigned import put_presigned
from workers.miner.admission import Admission
from workers.miner.middleware import Middleware, default_middleware
from workers.miner.pipelines.backend import Pipeline
from workers.miner.streaming import token_stream


@dataclass
class MinerRuntime:
    """Everything a miner's task needs, built before the worker consumes anything."""

    wallet: Wallet
    device: DeviceInfo
    pipelines: Mapping[str, Pipeline]
    middleware: list[Middleware] = field(default_factory=default_middleware)
    http: requests.Session = field(default_factory=requests.Session)
    admission: Admission | None = None  # None: ``admit`` refuses to run anything (in-process tests call execute)
    domain: Domain = DEFAULT_DOMAIN  # the network's EIP-712 domain: what completions and failures are signed for

    def admit(self, payload: Any) -> JobMessage:
        """The job in a received message, if this miner may run it; raises ``JobRefused`` otherwise."""
        if self.admission is None:
            raise ConfigError("this miner runtime has no admission checks: build it with "
                              "Admission.from_settings (workers.miner.launch.serve does)")
        return self.admission.admit(payload)

    def failure(self, job: JobMessage, error: BaseException) -> SignedFailure:
        """A signed report that ``job`` raised ``error`` here."""
        text = f"{type(error).__name__}: {error}"[:FAILURE_ERROR_CHARS]
        return sign_failure(self.wallet, Failure(job_id=job.job_id, miner=self.wallet.address, error=text,
                                                 failed_at=time.time()), self.domain)

    def execute(self, job: JobMessage, producers: ProducerPool | None = None) -> SignedCompletion:
        """Run ``job`` on its loaded pipeline, store the output, and sign what was done. A ``stream`` job
        also publishes its tokens through ``producers`` (the worker app's pool) as unverified previews."""
        pipeline = self.pipelines.get(job.model_id)
        if pipeline is None:
            raise UnknownModelError(f"this miner does not serve {job.model_id!r} (misrouted job {job.job_id})")
        for mw in self.middleware:
            mw.before_job(job)
        started = time.perf_counter()
        with token_stream(job, producers) as stream:
            output = pipeline.run(job.params, job.deadline_at, on_token=stream.on_token)
            stream.finish(output.finish_reason)
        ran = time.perf_counter()
        digest = put_presigned(job.output_url, output.data, output.content_type, session=self.http)
        uploaded = time.perf_counter()
        completion = Completion(
            job_id=job.job_id,
            model_id=job.model_id,
            miner=self.wallet.address,
            output_sha256=digest,
            output_bytes=len(output.data),
            content_type=output.content_type,
            input_tokens=output.input_tokens,
            output_tokens=output.output_tokens,
            timings=Timings(run_s=ran - started, upload_s=uploaded - ran, total_s=uploaded - started),
            device=self.device,
            weights_sha256=pipeline.weights_sha256,
            finished_at=time.time(),
        )
        for mw in self.middleware:
            completion = mw.after_job(job, completion)
        return SignedCompletion(completion=completion, signature=sign_message(self.wallet, completion, self.domain))
