"""The application-side client: validate, record, presign, enqueue; then read the verified result.

A private job (``private=True``, optionally an ``acc``) is sealed before it is recorded and sent to its model's
``private.*`` queue; its output is opened on the way out (``fetch_output``), so ``JobHandle.download`` returns
the plaintext. The sealing and opening live in ``heurist.privacy.client``.

Waiting is pushed on RabbitMQ: the ledger notifies the client when a job ends (``heurist.verdicts``), and
``wait_all`` reads the rows of the jobs it was told about. ``map`` records all its jobs in one INSERT and
publishes them with one confirm wait (``JobBook.create_jobs``, ``heurist.dispatch.send_jobs``): 300 jobs took
18.7 ms each to submit one by one and take 4.0 ms each so (RabbitMQ + PostgreSQL, 2 shared cores), mostly
building, presigning and signing each message.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from celery import Celery
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from heurist.catalog import Catalog, JobKind, ModelSpec, load_catalog
from heurist.celery_app import create_app
from heurist.client_types import ImageRequest, JobResult, TextRequest
from heurist.db.engine import is_disconnect
from heurist.dispatch import (
    DispatchSigner,
    JobsNotSentError,
    dispatch_signer,
    job_message,
    queue_for,
    send_job,
    send_jobs,
)
from heurist.errors import InvalidJobError, JobFailedError, JobTimeoutError, public_failure
from heurist.jobs import ImageParams, JobMessage, JobState, SignedJob, TextParams, output_content_type
from heurist.points import image_work_units, text_work_units
from heurist.privacy import client as privacy
from heurist.privacy.client import AccInput
from heurist.privacy.envelope import PrivacyError
from heurist.settings import Settings, get_settings
from heurist.storage import make_store
from heurist.storage.backend import ObjectStore
from heurist.submission import image_params, text_params
from heurist.verdicts.notice import notifies

if TYPE_CHECKING:
    from heurist.ledger.jobbook import JobBook, NewJob
    from heurist.ledger.reader import JobView, LedgerReader
    from heurist.verdicts.listener import VerdictListener, Watch

EXTENSIONS = {"image/png": ".png", "application/json": ".json"}
log = logging.getLogger(__name__)


class JobHandle:
    """A submitted job: poll it, wait for it, download its output."""

    def __init__(self, client: Client, job_id: str, spec: ModelSpec, output_key: str, *,
                 private: bool = False) -> None:
        self.client = client
        self.id = job_id
        self.spec = spec
        self.output_key = output_key
        self.private = private

    @property
    def queue(self) -> str:
        return self.spec.private_queue if self.private else self.spec.queue

    def __repr__(self) -> str:
        return f"JobHandle(id={self.id!r}, model={self.spec.id!r})"

    @property
    def url(self) -> str:
        """A presigned GET URL for the output (valid once the job has completed): its frozen copy once credited."""
        view = self.client.ledger.job(self.id)
        key = view.stored_key if view is not None else self.output_key
        return self.client.store.presign_get(key, self.client.settings.presign_expiry_s)

    def state(self) -> JobState:
        view = self.client.ledger.job(self.id)
        return JobState.QUEUED if view is None else view.state

    def result(self, timeout: float | None = 300.0) -> JobResult:
        """Wait until the ledger has a verdict; raise if the job failed or the wait runs out."""
        [view] = self.client.wait_all([self.id], timeout)
        result = self.client.to_result(view)
        if not view.state.has_output:
            raise JobFailedError(f"job {self.id} ended {view.state.value}: {view.error or 'no detail'}",
                                 public=public_failure(self.id, view.state, view.error))
        return result

    def download(self, directory: Path | None = None, timeout: float | None = 300.0) -> bytes | Path:
        """The output bytes, or with ``directory`` the path of the file written there."""
        data = self.client.fetch_output(self.result(timeout))
        if directory is None:
            return data
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / Path(self.output_key).name
        path.write_bytes(data)
        return path


class Client:
    """Submit jobs to the network. Holds the trusted side's credentials (ledger DB, S3 keys, broker)."""

    def __init__(self, settings: Settings | None = None, *, catalog: Catalog | None = None,
                 store: ObjectStore | None = None, ledger: LedgerReader | None = None, app: Celery | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings or get_settings()
        self.catalog = catalog or load_catalog(self.settings.catalog_path)
        self.clock = clock
        # Connections open on first use, so a request that fails validation touches nothing.
        if store is not None:
            self.store = store
        if ledger is not None:
            self.ledger = ledger
        if app is not None:
            self.app = app
        self._listener_lock = threading.Lock()

    @cached_property
    def store(self) -> ObjectStore:
        return make_store(self.settings)

    @cached_property
    def ledger(self) -> LedgerReader:
        """The ledger's read side: the client polls it and never verifies or credits anything."""
        from heurist.ledger.factory import open_reader

        return open_reader(self.settings)

    @cached_property
    def job_book(self) -> JobBook:
        """Where the client records the jobs it sends (and sending failures), on the reader's database."""
        from heurist.ledger.jobbook import JobBook

        return JobBook(self.ledger.engine, self.ledger.clock)

    @cached_property
    def app(self) -> Celery:
        return create_app(self.settings)

    @property
    def verdicts(self) -> VerdictListener | None:
        """This client's verdict listener, started on first use; None where verdicts are not pushed (the
        embedded broker, or ``verdict_notifications`` off): waits then poll the ledger (``heurist.verdicts``)."""
        with self._listener_lock:
            if "_verdicts" not in self.__dict__:
                self._verdicts: VerdictListener | None = None
                if notifies(self.settings):
                    from heurist.verdicts.listener import VerdictListener

                    heartbeat = self.settings.broker_heartbeat_s
                    self._verdicts = VerdictListener(lambda: self.app.connection_for_read(heartbeat=heartbeat))
                    self._verdicts.start()
            return self._verdicts

    @cached_property
    def privacy_secret(self) -> bytes:
        """What private jobs' data keys derive from (``heurist.privacy.client.client_secret``)."""
        return privacy.client_secret(self.settings)

    @cached_property
    def signer(self) -> DispatchSigner:
        """The network's dispatch key, which signs every job message this client sends."""
        return dispatch_signer(self.settings)

    def submit_image(self, prompt: str, *, model: str = "sd15", width: int | None = None,
                     height: int | None = None, steps: int | None = None, guidance: float | None = None,
                     seed: int | None = None, negative_prompt: str = "", private: bool = False,
                     acc: AccInput = None) -> JobHandle:
        """Validate against the model's limits and enqueue; nothing is sent if validation fails. ``private``:
        sealed for miners that satisfy ``acc`` (a ``heurist.privacy.acc`` condition, its dict or JSON)."""
        spec = self.catalog[model]
        params = image_params(spec, prompt, negative_prompt=negative_prompt, width=width, height=height,
                              steps=steps, guidance=guidance, seed=_seed(seed))
        return self.submit_params(spec, params, private=private, acc=acc)

    def submit_text(self, prompt: str, *, model: str = "smollm2-135m", max_tokens: int | None = None,
                    temperature: float = 0.0, seed: int | None = None, private: bool = False,
                    acc: AccInput = None) -> JobHandle:
        """Validate against the model's limits and enqueue; nothing is sent if validation fails. ``private``,
        ``acc``: as in ``submit_image``."""
        spec = self.catalog[model]
        params = text_params(spec, prompt, max_tokens=max_tokens, temperature=temperature, seed=_seed(seed))
        return self.submit_params(spec, params, private=private, acc=acc)

    def submit(self, request: ImageRequest | TextRequest, *, job_id: str | None = None,
               stream_key: str | None = None) -> JobHandle:
        """Validate and enqueue; ``job_id`` lets a caller (the gateway) reserve credits under the id first;
        ``stream_key`` asks the miner to publish tokens: open a ``heurist.streams.TokenStream`` for the job id
        first and pass its ``key``; after the stream, ``TokenStream.verify`` checks it against the answer."""
        spec, params = self._validated(request)
        return self.submit_params(spec, params, job_id=job_id, stream_key=stream_key, private=request.private,
                                  acc=request.acc)

    def submit_many(self, requests: Sequence[ImageRequest | TextRequest]) -> list[JobHandle]:
        """Validate every request (one invalid: nothing is recorded or sent), record them all in one INSERT and
        send them with one confirm wait. Jobs the broker never confirmed are recorded failed and raised as
        ``JobsNotSentError`` (a BrokerUnavailableError naming them); the others run."""
        prepared = [self._prepare(*self._validated(r), private=r.private, acc=r.acc) for r in requests]
        self.job_book.create_jobs([p.record for p in prepared])
        try:
            self._send_many([(p.signed, p.record.queue) for p in prepared])
        except JobsNotSentError as err:
            for job_id in err.job_ids:
                self.job_book.record_failure(job_id, "could not enqueue: broker unreachable")
            unsent = set(err.job_ids)
            err.sent = tuple(p.handle for p in prepared if p.record.job_id not in unsent)
            raise
        except Exception:
            for p in prepared:
                self.job_book.record_failure(p.record.job_id, "could not enqueue: broker unreachable")
            raise
        return [p.handle for p in prepared]

    def map(self, requests: Sequence[ImageRequest | TextRequest], *, timeout: float = 600.0,
            progress: bool = True) -> list[JobResult]:
        """Submit many jobs (``submit_many``), then wait for all with a progress bar; failed jobs come back with
        their state."""
        handles = self.submit_many(requests)
        with _progress(progress) as bar:
            task = bar.add_task("jobs", total=len(handles))
            views = self.wait_all([h.id for h in handles], timeout,
                                  on_progress=lambda done, _total: bar.update(task, completed=done))
        return [self.to_result(v) for v in views]

    def wait_all(self, job_ids: Sequence[str], timeout: float | None,
                 on_progress: Callable[[int, int], None] | None = None) -> list[JobView]:
        """Wait until the ledger has a verdict for every job; their views, in ``job_ids`` order.

        The one wait of the library: ``JobHandle.result``, ``map`` and the gateway all use it. It is timed on
        the monotonic clock, so a wall-clock step neither ends a wait early nor stretches it. Each read is one
        query per 500 ids (IN lists stay short), then ``on_progress(done, total)``. Past ``timeout`` (None: no
        limit) a JobTimeoutError names the unfinished jobs in its message and in ``job_ids``.

        Where verdicts are pushed (``verdicts``, RabbitMQ) it reads every unfinished job once, then sleeps until
        the ledger notifies one of them: a notice sealed for this client carries the job's view, taken as it is
        (``heurist.verdicts.notice``), and only notified jobs without one are read. Every
        ``verdict_fallback_poll_s`` it reads all of them again (a notice can be lost). It polls every
        ``result_poll_interval_s`` instead while the listener is disconnected, while some job is not this
        client's (submitted elsewhere: its notices go to another queue), and on the embedded broker.

        A database outage is waited out, not raised: the jobs keep running and the ledger keeps their
        completions until it can record them (``heurist.transient``). A read that cannot reach the database
        logs one warning per outage and backs off (doubling up to ``OUTAGE_POLL_MAX_S``) until it answers
        again or ``timeout`` passes, which then raises ``LedgerUnavailableError`` (a JobTimeoutError naming
        the database). Any other database error is raised at once.
        """
        give_up = None if timeout is None else time.monotonic() + timeout
        wanted = list(dict.fromkeys(job_ids))
        with self._watch(wanted) as watch:
            finished = self._wait(wanted, watch, give_up, timeout, on_progress)
        return [finished[j] for j in job_ids]

    @contextmanager
    def _watch(self, job_ids: list[str]) -> Iterator[Watch | None]:
        listener = self.verdicts
        with listener.watch(job_ids) if listener is not None else nullcontext() as watch:
            yield watch

    def _wait(self, wanted: list[str], watch: Watch | None, give_up: float | None, timeout: float | None,
              on_progress: Callable[[int, int], None] | None) -> dict[str, JobView]:
        finished: dict[str, JobView] = {}
        outage = _Outage(self.settings.result_poll_interval_s)
        read_all_at = 0.0  # when to read every unfinished job (monotonic); at once first
        while True:
            notified, resync = watch.take() if watch is not None else ({}, True)
            finished.update((j, v) for j, v in notified.items() if v is not None and j in wanted)  # sealed: no read
            pending = [j for j in wanted if j not in finished]
            now = time.monotonic()
            full = resync or now >= read_all_at or (give_up is not None and now > give_up)
            ids = pending if full else [j for j in pending if j in notified]
            views = self._read_through(ids, outage) if ids else []  # (all brought by sealed notices)
            if views is None:
                read_all_at = 0.0
            else:
                finished.update((v.job_id, v) for v in views if v.state.terminal)
                if full:
                    read_all_at = time.monotonic() + self._next_read_all(watch, ids, views)
                if on_progress is not None:
                    on_progress(len(finished), len(wanted))
                if len(finished) == len(wanted):
                    return finished
            if give_up is not None and time.monotonic() > give_up:
                unfinished = [j for j in wanted if j not in finished]
                raise outage.timeout(unfinished, timeout) if outage.since is not None else \
                    _timeout(unfinished, len(wanted), timeout)
            until = time.monotonic() + outage.pause() if outage.failures else read_all_at
            pause = max(0.0, (until if give_up is None else min(until, give_up)) - time.monotonic())
            if watch is None or outage.failures:
                time.sleep(pause)
            else:
                watch.wait(pause)

    def _read_through(self, job_ids: list[str], outage: _Outage) -> list[JobView] | None:
        """The views of ``job_ids``; None while the database is away (the jobs are not: keep waiting)."""
        try:
            views = self._read(job_ids)
        except Exception as err:
            if not is_disconnect(err):
                raise
            outage.failed(err)
            return None
        outage.over()
        return views

    def _read(self, job_ids: list[str]) -> list[JobView]:
        views: list[JobView] = []
        for start in range(0, len(job_ids), 500):
            views += self.ledger.jobs(job_ids[start:start + 500])
        return views

    def _next_read_all(self, watch: Watch | None, ids: list[str], views: list[JobView]) -> float:
        """Seconds until the next read of every unfinished job: the fallback poll if a notice will come for
        each of them, else the poll interval (no listener, or it is down, or some job is unknown or another
        client's)."""
        listener = None if watch is None else watch.listener
        open_jobs = [v for v in views if not v.state.terminal]
        if listener is None or not listener.connected or len(views) < len(ids) or any(
                v.notify_key != listener.key for v in open_jobs):
            return self.settings.result_poll_interval_s
        return self.settings.verdict_fallback_poll_s

    def fetch_output(self, result: JobResult) -> bytes:
        """The credited bytes: the frozen copy the ledger made of exactly what it verified, which no
        presigned URL can overwrite. They are still checked against the verified sha256, because completions
        from before freezing are read from the mutable output key. A private job's are decrypted (the sha256
        is the ciphertext's)."""
        data = self.store.get(result.stored_key)
        if result.output_sha256 is None or hashlib.sha256(data).hexdigest() != result.output_sha256:
            raise JobFailedError(
                f"output of job {result.job_id} does not match the sha256 the ledger verified "
                f"({result.output_sha256}); it was changed after delivery, report miner {result.miner}",
                public=f"the output of job {result.job_id} no longer matches what the ledger verified; "
                       "it is not served",
            )
        if result.private:
            return self._open(result, data)
        return data

    def _open(self, result: JobResult, data: bytes) -> bytes:
        spec = self.catalog.models.get(result.model_id)
        try:
            return privacy.open_output(self.privacy_secret, result.job_id, data,
                                       text=spec is not None and spec.kind is JobKind.TEXT)
        except PrivacyError as err:
            raise JobFailedError(str(err), public=f"the output of private job {result.job_id} does not open "
                                 "with this client's key") from None

    def to_result(self, view: JobView) -> JobResult:
        url = self.store.presign_get(view.stored_key, self.settings.presign_expiry_s) if view.state.has_output else None
        return JobResult(job_id=view.job_id, model_id=view.model_id, state=view.state, points=view.points,
                         miner=view.miner, url=url, output_key=view.output_key, output_sha256=view.output_sha256,
                         error=view.error, frozen_key=view.frozen_key, private=view.private)

    def submit_params(self, spec: ModelSpec, params: ImageParams | TextParams, *, job_id: str | None = None,
                      stream_key: str | None = None, private: bool = False, acc: AccInput = None) -> JobHandle:
        """Record, presign and enqueue parameters already validated against ``spec``
        (``heurist.submission``): the gateway validates a request once, prices it, then sends it here.
        ``stream_key``: as in ``submit``; ``private``, ``acc``: as in ``submit_image`` (the record and the
        message then hold only the billed parameters, the rest sealed)."""
        job = self._prepare(spec, params, job_id=job_id, stream_key=stream_key, private=private, acc=acc)
        self.job_book.create_jobs([job.record])
        try:
            self._send(job.signed, job.record.queue)
        except Exception:
            self.job_book.record_failure(job.record.job_id, "could not enqueue: broker unreachable")
            raise
        return job.handle

    def _validated(self, request: ImageRequest | TextRequest) -> tuple[ModelSpec, ImageParams | TextParams]:
        spec = self.catalog[request.model]
        if isinstance(request, ImageRequest):
            return spec, image_params(
                spec, request.prompt, negative_prompt=request.negative_prompt, width=request.width,
                height=request.height, steps=request.steps, guidance=request.guidance, seed=_seed(request.seed))
        return spec, text_params(spec, request.prompt, max_tokens=request.max_tokens,
                                 temperature=request.temperature, seed=_seed(request.seed))

    def _prepare(self, spec: ModelSpec, params: ImageParams | TextParams, *, job_id: str | None = None,
                 stream_key: str | None = None, private: bool = False, acc: AccInput = None) -> _Prepared:
        """A job's record and signed message, nothing written or sent yet (``submit_params`` says what the
        arguments are)."""
        from heurist.ledger.jobbook import NewJob

        privacy.refuse_acc_without_private(private, acc)
        if private and stream_key is not None:
            raise InvalidJobError("stream: private jobs do not stream (tokens on the broker would be plaintext); "
                                  "drop stream_key and read the answer with result()/download()")
        condition = privacy.condition(acc) if private else None
        job_id = job_id or str(uuid.uuid4())
        output_key = f"outputs/{spec.id}/{job_id}{EXTENSIONS[_content_type(spec)]}"
        deadline_at = self.clock() + spec.deadline.seconds(_work_units(params))
        sealed = None
        if condition is not None:
            nodes = privacy.node_keys(self.settings)  # a missing node list is refused before the secret file is made
            params, sealed = privacy.seal_job(self.settings, self.privacy_secret, job_id, spec.id, params, condition,
                                              nodes)
        message = job_message(job_id, spec.id, params, output_key, deadline_at, self.store,
                              self.settings.presign_expiry_s, now=self.clock(), private=sealed)
        if stream_key is not None:  # validated, so a malformed key is refused here, not by the miner
            message = JobMessage.model_validate({**message.model_dump(), "stream": True, "stream_key": stream_key})
        listener = self.verdicts  # started here, so it is most likely bound before the verdict comes
        record = NewJob(job_id, spec, params, output_key, queue_for(spec, sealed), deadline_at, sealed,
                        None if listener is None else listener.key)
        return _Prepared(record, self.signer.sign(message),
                         JobHandle(self, job_id, spec, output_key, private=sealed is not None))

    def _send(self, signed: SignedJob, queue: str) -> None:
        send_job(self.app, signed, queue)

    def _send_many(self, jobs: list[tuple[SignedJob, str]]) -> None:
        if len(jobs) == 1:
            try:
                self._send(*jobs[0])
            except Exception as err:
                raise JobsNotSentError(str(err), [jobs[0][0].job.job_id]) from err
            return
        send_jobs(self.app, jobs)

    def close(self) -> None:
        listener = self.__dict__.get("_verdicts")
        if listener is not None:
            listener.stop()
        if "app" in self.__dict__:
            self.app.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


@dataclass(frozen=True)
class _Prepared:
    """A job ready to record (``record``) and send (``signed``), and the handle its caller gets."""

    record: NewJob
    signed: SignedJob
    handle: JobHandle


def _seed(seed: int | None) -> int:
    """An explicit seed, or a fresh random one; either way it is recorded so an audit can replay."""
    return secrets.randbelow(2**32) if seed is None else seed


def _content_type(spec: ModelSpec) -> str:
    return output_content_type(spec.kind)


def _work_units(params: ImageParams | TextParams) -> float:
    if isinstance(params, ImageParams):
        return image_work_units(params)
    return text_work_units(len(params.prompt.encode()), params.max_tokens)


OUTAGE_POLL_MAX_S = 2.0  # while the database is away, wait_all polls it at least this often


class LedgerUnavailableError(JobTimeoutError):
    """A wait ran out while the ledger's database was unreachable: the jobs may have finished; ask again later."""

    public = "the ledger's database is unavailable; the jobs keep running: ask for them again in a minute"


class _Outage:
    """One wait's view of the database: when it stopped answering, how long to pause before the next poll."""

    def __init__(self, poll_s: float) -> None:
        self.poll_s = poll_s
        self.since: float | None = None
        self.failures = 0
        self.error = ""

    def failed(self, err: BaseException) -> None:
        self.failures += 1
        self.error = " ".join(str(err).split())[:200]
        if self.since is None:
            self.since = time.monotonic()
            log.warning("the ledger database is unreachable (%s: %s); still waiting for the jobs",
                        type(err).__name__, self.error)

    def over(self) -> None:
        if self.since is not None:
            log.warning("the ledger database answers again after %.1fs", time.monotonic() - self.since)
        self.since, self.failures = None, 0

    def pause(self) -> float:
        if not self.failures:
            return self.poll_s
        return min(OUTAGE_POLL_MAX_S, max(self.poll_s, 0.1) * 2.0 ** min(self.failures, 10))

    def timeout(self, pending: list[str], timeout: float | None) -> LedgerUnavailableError:
        down = time.monotonic() - (self.since or time.monotonic())
        return LedgerUnavailableError(
            f"{len(pending)} job(s) not known finished after {timeout:g}s: the ledger database has been "
            f"unreachable for {down:.0f}s ({self.error}); the jobs keep running, ask again once it is back",
            tuple(pending))


def _timeout(pending: list[str], total: int, timeout: float | None) -> JobTimeoutError:
    shown = ", ".join(pending[:3]) + ("…" if len(pending) > 3 else "")
    what = f"job {pending[0]}" if total == 1 else f"{len(pending)} of {total} jobs ({shown})"
    return JobTimeoutError(f"{what} not finished after {timeout:g}s; is a miner serving its queue? "
                           "(see `heurist routes`)", tuple(pending))


def _progress(enabled: bool) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=Console(stderr=True), disable=not enabled)
