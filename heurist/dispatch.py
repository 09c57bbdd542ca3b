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

Each message carries Celery's ``timelimit`` header, soft and hard, derived from the time left to its deadline
when it is sent (``heurist.time_limits``: soft 10% before it, at most 30 s; hard 10% after, 2-30 s). Miners
enforce them themselves, since Celery does only in its prefork pool (``workers.miner.runtime``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

from celery import Celery

from heurist.catalog import ModelSpec
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
