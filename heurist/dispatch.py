"""Sending a recorded job to its miners' queue: one place, for the client, the gateway and the ledger's redispatch.

The job message carries a fresh presigned PUT URL for the job's output key and is signed with the network's
dispatch key (EIP-712, ``heurist.signing``). Miners run only messages that recover to the ``dispatch_address``
they were given (``workers.miner.admission``): anyone who may publish into a tier queue could otherwise have an
honest miner render 512² on a 256-max model, PUT to an HTTP server of theirs, or answer a victim's job id
with their own prompt.

The message carries no callbacks. It used to carry the ledger's tasks as Celery ``link``/``link_error``, and a
miner that republished a job with ``link`` pointed at its own exchange received the honest miner's completion
and re-signed it as its own. Now the miner sends its signed completion (or signed failure) to the ledger itself,
and every heurist worker ignores callbacks found in a message (``heurist.unlinked``).

The dispatch key: ``HEURIST_DISPATCH_KEY``, or ``data_dir/dispatch.key`` created on first use (0600), so the
embedded network and the tests need no setup. A key file is published atomically (written aside, then
hard-linked into place), so a ledger and a client starting together agree on one key.

The URL expires at the job's deadline (``upload_expiry_s``). Every miner of the tier can read the
message, and a URL that outlived the deadline (it used to live ``presign_expiry_s``, 3,600 s) let anybody
overwrite the output long after the job was done.

Many jobs at once (``Client.map``) go through ``send_jobs``: on RabbitMQ they are all published on one connection
in confirm mode and the broker's confirms are awaited once for the batch, not once per job (``send_job``'s
confirmed publish waited a round trip each: 4.7 ms a job, an eighth of `heurist bench path`'s full path).
What the broker did not confirm is published again on a new connection, on ``heurist.confirms``' schedule; what
it never confirms raises ``JobsNotSentError`` naming those jobs.

Each message carries Celery's ``timelimit`` header, soft and hard, derived from the time left to its deadline
when it is sent (``heurist.time_limits``: soft 10% before it, at most 30 s; hard 10% after, 2-30 s). Miners
enforce them themselves, since Celery does only in its prefork pool (``workers.miner.runtime``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amqp.exceptions import MessageNacked
from celery import Celery
from kombu import Producer

from heurist.catalog import ModelSpec
from heurist.confirms import PUBLISH_ERRORS, BrokerUnavailableError, unavailable
from heurist.errors import ConfigError, HeuristError
from heurist.identity import Wallet
from heurist.jobs import ImageParams, JobMessage, PrivateEnvelope, SignedJob, TextParams
from heurist.secret_files import ensure_secret
from heurist.settings import Settings
from heurist.signing import DEFAULT_DOMAIN, Domain, sign_job
from heurist.storage.backend import ObjectStore
from heurist.time_limits import TimeLimits
from tasks.names import RUN_JOB

KEY_FILE = "dispatch.key"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DispatchSigner:
    """The network's dispatch key: ``address`` is what miners are told (``HEURIST_DISPATCH_ADDRESS``)."""

    wallet: Wallet
    domain: Domain = DEFAULT_DOMAIN  # the network's EIP-712 domain (its chain id): heurist.signing

    @property
    def address(self) -> str:
        return self.wallet.address

    def sign(self, job: JobMessage) -> SignedJob:
        return sign_job(self.wallet, job, self.domain)


def dispatch_signer(settings: Settings) -> DispatchSigner:
    """The trusted side's dispatch key: ``settings.dispatch_key``, else ``data_dir/dispatch.key`` (created)."""
    if settings.dispatch_key is not None:
        try:
            return DispatchSigner(Wallet.from_key(settings.dispatch_key.get_secret_value()), Domain.of(settings))
        except ConfigError:
            raise ConfigError("HEURIST_DISPATCH_KEY is not a valid 32-byte hex private key; unset it to use "
                              f"{settings.data_dir / KEY_FILE} (created on first use)") from None
    return DispatchSigner(_key_file_wallet(settings.data_dir / KEY_FILE), Domain.of(settings))


def _key_file_wallet(path: Path) -> Wallet:
    text = ensure_secret(path, lambda: Wallet.create().key_hex, "dispatch key file")
    try:
        return Wallet.from_key(text)
    except ConfigError:
        raise ConfigError(f"dispatch key file {path} does not hold a hex private key; remove it to make a new "
                          "one (miners must then be given the new HEURIST_DISPATCH_ADDRESS)") from None


class DeadlinePassedError(HeuristError):
    """The job's deadline is less than a second away: no upload URL can still be valid, so it is not sent."""


def upload_expiry_s(deadline_at: float, now: float, cap_s: int) -> int:
    """Seconds a PUT URL presigned at ``now`` may live: until the deadline, at most ``cap_s``
    (``Settings.presign_expiry_s``).

    SigV4 counts whole seconds from ``X-Amz-Date``, which is ``now`` floored, so flooring the time left keeps
    the expiry at or before the deadline. A deadline less than 1 s away raises DeadlinePassedError.
    """
    left = math.floor(deadline_at - now)
    if left < 1:
        raise DeadlinePassedError(f"the job's deadline passed {now - deadline_at:.1f}s ago (or is under 1 s away): "
                                  "no upload URL can be valid; submit it again")
    return min(left, cap_s)


def job_message(job_id: str, model_id: str, params: ImageParams | TextParams, output_key: str,
                deadline_at: float, store: ObjectStore, expiry_s: int, *, now: float | None = None,
                private: PrivateEnvelope | None = None) -> JobMessage:
    """What a miner receives: the job and where to put its output, nothing more. The PUT URL lives until
    the deadline, capped at ``expiry_s``; ``now`` is the clock the deadline was set by (default: time.time).
    ``private``: a private job's envelope (``params`` are then its clear copy); send it to ``private_queue``."""
    lifetime = upload_expiry_s(deadline_at, time.time() if now is None else now, expiry_s)
    return JobMessage(job_id=job_id, model_id=model_id, params=params,
                      output_url=store.presign_put(output_key, lifetime), deadline_at=deadline_at, private=private)


def queue_for(spec: ModelSpec, private: PrivateEnvelope | None) -> str:
    """The queue a job travels on: ``private.<tier>.<model>`` for a private job, never the public one."""
    return spec.queue if private is None else spec.private_queue


def send_job(app: Celery, signed: SignedJob, queue: str, *, now: float | None = None) -> None:
    """Enqueue a signed job message on ``queue``, with no callbacks: the miner reports to the ledger itself. Its
    ``timelimit`` header holds the job's soft and hard time limits, from its deadline and ``now`` (time.time)."""
    limits = TimeLimits.for_time_left(signed.job.deadline_at - (time.time() if now is None else now))
    app.send_task(RUN_JOB, args=[signed.model_dump(mode="json")], task_id=signed.job.job_id, queue=queue,
                  **limits.celery_options())


class JobsNotSentError(BrokerUnavailableError):
    """The broker never confirmed these jobs' messages (``job_ids``); the others of the batch are on the broker.
    ``Client.submit_many`` sets ``sent`` to the handles of those others: they run, and are billed, so a caller
    can still wait for them."""

    def __init__(self, message: str, job_ids: Sequence[str]) -> None:
        super().__init__(message)
        self.job_ids = tuple(job_ids)
        self.sent: tuple[Any, ...] = ()


class _ConfirmTimeout(Exception):
    """The broker did not confirm every message of a batch in time."""


RETRIED: tuple[type[BaseException], ...] = (*PUBLISH_ERRORS, _ConfirmTimeout)


def send_jobs(app: Celery, jobs: Sequence[tuple[SignedJob, str]], *, now: float | None = None) -> None:
    """Enqueue many signed jobs, each on its queue, as ``send_job`` does one; on RabbitMQ with one confirm wait
    for the batch. Raises ``JobsNotSentError`` naming the jobs the broker never confirmed."""
    if not jobs:
        return
    if not getattr(app, "confirms", False):  # the embedded broker: a publish is an INSERT, done when it returns
        _send_each(app, jobs, now)
        return
    settings = app.settings  # type: ignore[attr-defined]  # a HeuristCelery (heurist.celery_app)
    pending, pause = list(jobs), 0.0
    give_up = time.monotonic() + settings.broker_publish_timeout_s
    while True:
        confirms, tags = _Confirms(), list[int]()
        fatal: BaseException | None = None
        try:
            _publish_batch(app, pending, confirms, tags, now, settings.broker_confirm_timeout_s)
            error: BaseException | None = None
        except RETRIED as err:
            error = err
        except Exception as err:  # not the broker's weather: no retry, but the jobs it confirmed stay sent
            error = fatal = err
        pending = [job for job, tag in zip(pending, tags + [0] * (len(pending) - len(tags)), strict=True)
                   if not confirms.acked(tag)]
        if not pending:
            return
        if fatal is not None:
            raise JobsNotSentError(f"could not enqueue {len(pending)} job(s): {type(fatal).__name__}: {fatal}",
                                   [s.job.job_id for s, _ in pending]) from fatal
        error = error or MessageNacked(f"the broker refused {len(pending)} job message(s)")
        if time.monotonic() + pause > give_up:
            first = unavailable(f"{len(pending)} job(s)", {"queue": pending[0][1]}, app.connection_for_write()
                                .as_uri(), settings, error)
            raise JobsNotSentError(str(first), [s.job.job_id for s, _ in pending]) from error
        log.info("%d job message(s) not confirmed by the broker (%s: %s); trying again in %gs", len(pending),
                 type(error).__name__, error, pause)
        time.sleep(pause)
        pause = min(max(pause * 2, 1.0), 5.0)


def _send_each(app: Celery, jobs: Sequence[tuple[SignedJob, str]], now: float | None) -> None:
    for i, (signed, queue) in enumerate(jobs):
        try:
            send_job(app, signed, queue, now=now)
        except Exception as err:
            raise JobsNotSentError(f"could not enqueue job {signed.job.job_id}: {err}",
                                   [s.job.job_id for s, _ in jobs[i:]]) from err


@dataclass
class _Confirms:
    """The broker's answers on one confirm-mode channel: delivery tag -> acked (True) or nacked (False)."""

    published: int = 0
    settled: dict[int, bool] = field(default_factory=dict)
    floor: int = 1  # every tag below it is settled

    def ack(self, tag: int, multiple: bool) -> None:
        self._settle(tag, multiple, True)

    def nack(self, tag: int, multiple: bool) -> None:
        self._settle(tag, multiple, False)

    def _settle(self, tag: int, multiple: bool, ok: bool) -> None:
        for t in range(self.floor, tag + 1) if multiple else (tag,):
            self.settled.setdefault(t, ok)
        while self.floor in self.settled:
            self.floor += 1

    def acked(self, tag: int) -> bool:
        return self.settled.get(tag, False)

    def done(self) -> bool:
        return self.floor > self.published


def _publish_batch(app: Celery, jobs: Sequence[tuple[SignedJob, str]], confirms: _Confirms, tags: list[int],
                   now: float | None, timeout: float) -> None:
    """Publish ``jobs`` on a new connection in confirm mode, then wait at most ``timeout`` for every confirm;
    ``tags`` gets each published job's delivery tag. Those are counted as they are published: Celery's task-sent
    event of each job (``task_send_sent_event``) follows it on the same channel and takes a tag too."""
    with app.connection_for_write(transport_options={"read_timeout": timeout, "write_timeout": timeout}) as conn:
        channel: Any = conn.channel()
        channel.confirm_select()
        channel.events["basic_ack"].add(confirms.ack)
        channel.events["basic_nack"].add(confirms.nack)
        raw = channel._basic_publish

        def publish(*args: Any, **kwargs: Any) -> Any:  # not waiting for each confirm, as py-amqp's would
            kwargs.pop("confirm_timeout", None)
            confirms.published += 1
            return raw(*args, **kwargs)

        channel.basic_publish = publish
        producer = Producer(channel)
        for signed, queue in jobs:
            tags.append(confirms.published + 1)
            limits = TimeLimits.for_time_left(signed.job.deadline_at - (time.time() if now is None else now))
            Celery.send_task(app, RUN_JOB, args=[signed.model_dump(mode="json")], task_id=signed.job.job_id,
                             queue=queue, producer=producer, **limits.celery_options())
        give_up = time.monotonic() + timeout
        while not confirms.done():
            left = give_up - time.monotonic()
            if left <= 0:
                raise _ConfirmTimeout(f"{confirms.published - confirms.floor + 1} confirm(s) missing after "
                                      f"{timeout:g}s")
            try:
                conn.drain_events(timeout=left)
            except TimeoutError:
                continue
