"""The miner runtime: pipelines loaded once at start, each job on its own worker thread, its model call batched
with the other jobs of its model running then (``workers.miner.batches``), output PUT, completion signed. An
output of at most ``inline_bytes`` (32 KiB, a text answer) goes inside the completion instead of being uploaded
(``heurist.ledger.inline``: the ledger stores it, one S3 request per job instead of four).

A message is admitted first (``workers.miner.admission``: the dispatcher's signature, the deadline, the
model, the catalog's limits, the store); a job that then raises is reported as a signed ``Failure``.

Each job runs within its time limits (``heurist.time_limits``): the pipeline is given the soft limit, 10% of
the time (at most 30 s) before the deadline, and stops at its next step boundary past it; the rest is the
upload's, retried until the deadline (``heurist.storage.presigned``). A model call still running at the hard
limit is the watchdog's (``workers.miner.watchdog``). A failure's text says whose fault it was
(``heurist.errors.FailureKind``): "storage: upload to … failed after 9 attempts over 40.2 s (ConnectionError)",
"time limit: image job stopped after step 12 of 50 …", or the job's own "RuntimeError: CUDA out of memory".

A private job (``job.private``, issue 16) runs only on a runtime with ``privacy`` (``heurist miner --private``;
admission refuses it elsewhere): its key is gathered from the key-release nodes and its real parameters decrypted
(``workers.miner.private``), the pipeline runs on them, and the output is encrypted before the upload. The
completion's sha256 and size are the ciphertext's, its token counts the real ones; a key or decryption failure
is reported as "privacy: ...". The clear job is what middleware and logs see; the real one only the pipeline.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import requests
from amqp.exceptions import ConnectionError as AMQPConnectionError
from kombu.exceptions import OperationalError
from kombu.pools import ProducerPool

from heurist.errors import ConfigError, FailureKind, TimeLimitExceeded, UnknownModelError
from heurist.identity import Wallet
from heurist.jobs import (
    FAILURE_ERROR_CHARS,
    MAX_INLINE_BYTES,
    Completion,
    DeviceInfo,
    Failure,
    JobMessage,
    SignedCompletion,
    SignedFailure,
    Timings,
    sends_inline,
)
from heurist.privacy.envelope import PrivacyError
from heurist.privacy.metering import PRIVATE_CONTENT_TYPE
from heurist.signing import DEFAULT_DOMAIN, Domain, sign_failure, sign_message
from heurist.storage.presigned import put_presigned
from heurist.time_limits import JobClock
from workers.miner.admission import Admission
from workers.miner.batches import ModelBatches
from workers.miner.middleware import Middleware, default_middleware
from workers.miner.pipelines.backend import DeadlineExceeded, Pipeline, PipelineOutput
from workers.miner.private import PrivateJobs
from workers.miner.streaming import token_stream
from workers.miner.watchdog import Watchdog

BROKER_ERRORS = (OperationalError, AMQPConnectionError)  # reported as "broker: …"
TimeLimitHeader = tuple[float | None, float | None] | list[float | None] | None  # Celery's (hard, soft)


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
    watchdog: Watchdog | None = None  # the hard time limit (``install_watchdog``); None: not enforced (in-process)
    privacy: PrivateJobs | None = None  # set on a privacy miner (``heurist miner --private``): runs private jobs
    max_batch: int = 1  # jobs of one model run together (``workers.miner.batches``; serve: HEURIST_MINER_MAX_BATCH)
    batch_window_s: float = 0.0  # how long a batch waits for more (serve: HEURIST_MINER_BATCH_WINDOW_MS)
    inline_bytes: int = MAX_INLINE_BYTES  # outputs up to this size go inside the completion (heurist.ledger.inline)
    batches: ModelBatches = field(init=False)

    def __post_init__(self) -> None:
        self.batches = ModelBatches(self.pipelines, self.max_batch, self.batch_window_s)

    def admit(self, payload: Any) -> JobMessage:
        """The job in a received message, if this miner may run it; raises ``JobRefused`` otherwise."""
        if self.admission is None:
            raise ConfigError("this miner runtime has no admission checks: build it with "
                              "Admission.from_settings (workers.miner.launch.serve does)")
        return self.admission.admit(payload)

    def failure(self, job: JobMessage, error: BaseException) -> SignedFailure:
        """A signed report that ``job`` raised ``error`` here, its kind first when the fault was not the job's."""
        kind = (FailureKind.BROKER if isinstance(error, BROKER_ERRORS)
                else FailureKind.PRIVACY if isinstance(error, PrivacyError) else None)
        text = FailureKind.text(error, kind)[:FAILURE_ERROR_CHARS]
        return sign_failure(self.wallet, Failure(job_id=job.job_id, miner=self.wallet.address, error=text,
                                                 failed_at=time.time()), self.domain)

    def execute(self, job: JobMessage, producers: ProducerPool | None = None,
                timelimit: TimeLimitHeader = None) -> SignedCompletion:
        """Run ``job`` on its loaded pipeline within its time limits (``timelimit``: the message's Celery header,
        ``(hard, soft)`` seconds from now), store the output, and sign what was done. A ``stream`` job also
        publishes its tokens through ``producers`` (the worker app's pool) as unverified previews."""
        pipeline = self.pipelines.get(job.model_id)
        if pipeline is None:
            raise UnknownModelError(f"this miner does not serve {job.model_id!r} (misrouted job {job.job_id})")
        for mw in self.middleware:
            mw.before_job(job)
        header = (timelimit[0], timelimit[1]) if timelimit else None
        limits = JobClock.start(job.deadline_at, time.time(), header)
        if self.watchdog is None:
            return self._run(job, pipeline, limits, producers)
        with self.watchdog.watch(job, limits):
            return self._run(job, pipeline, limits, producers)

    def _run(self, job: JobMessage, pipeline: Pipeline, limits: JobClock,
             producers: ProducerPool | None) -> SignedCompletion:
        started = time.perf_counter()
        key, real = self._open(job, pipeline)
        with token_stream(real, producers) as stream:  # a private job never streams (JobMessage forbids it)
            run = partial(self.batches.run, real.model_id, real.params, on_token=stream.on_token, alone=key is not None)
            output = _within_soft_limit(run, real, limits)
            stream.finish(output.finish_reason)
        data, content_type = output.data, output.content_type
        if key is not None:
            data, content_type = PrivateJobs.seal(key, job.job_id, output.data), PRIVATE_CONTENT_TYPE
        ran = time.perf_counter()
        inline = sends_inline(len(data), job.deadline_at - time.time(), self.inline_bytes)
        digest = (hashlib.sha256(data).hexdigest() if inline else
                  put_presigned(job.output_url, data, content_type, session=self.http, deadline_at=job.deadline_at))
        uploaded = time.perf_counter()
        completion = Completion(
            job_id=job.job_id,
            model_id=job.model_id,
            miner=self.wallet.address,
            output_sha256=digest,
            output_bytes=len(data),
            content_type=content_type,
            input_tokens=output.input_tokens,
            output_tokens=output.output_tokens,
            timings=Timings(run_s=ran - started, upload_s=uploaded - ran, total_s=uploaded - started),
            device=self.device,
            weights_sha256=pipeline.weights_sha256,
            finished_at=time.time(),
        )
        for mw in self.middleware:
            completion = mw.after_job(job, completion)
        return SignedCompletion(completion=completion, signature=sign_message(self.wallet, completion, self.domain),
                                output=data if inline else None)

    def _open(self, job: JobMessage, pipeline: Pipeline) -> tuple[bytes | None, JobMessage]:
        """A private job's data key and its copy with the real parameters; a public job as it is."""
        if job.private is None:
            return None, job
        if self.privacy is None:
            raise PrivacyError(f"job {job.job_id} is private and this miner is not a privacy miner "
                               "(start it with `heurist miner --private`)")
        return self.privacy.open(job, pipeline.spec)


def _within_soft_limit(run: Callable[[float], PipelineOutput], job: JobMessage, limits: JobClock) -> PipelineOutput:
    """The pipeline's output (``run``: in a batch), given the soft limit as its deadline. An image job stopped by
    it raises ``TimeLimitExceeded`` saying when; a text job keeps its answer so far (finish reason "deadline",
    credited for the tokens made, as a streamed answer cut by time is), unless it made none."""
    when = (f"its soft limit: {limits.soft_at - limits.started_at:.1f} s after it started, "
            f"{job.deadline_at - limits.soft_at:.1f} s before the deadline")
    try:
        output = run(limits.soft_at)
    except DeadlineExceeded as err:
        raise TimeLimitExceeded(f"{err} ({when})") from err
    if output.finish_reason == "deadline" and output.output_tokens == 0:
        raise TimeLimitExceeded(f"text job stopped before its first token ({when})")
    return output
