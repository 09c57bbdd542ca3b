"""Jobs go back to the queue when a miner's work is void: a banned miner's (``Redispatch``), and a job a miner
reported failed or answered with a bad result (``ResendOnReport``, within the sweep's re-send budget).

On RabbitMQ a ban also closes the miner's connection, so the jobs it held unacked are redelivered by the
broker (``heurist.access``); this middleware covers the ones it had already finished, and the embedded
broker, where a banned miner cannot be stopped from consuming. After ``MAX_BANNED_ATTEMPTS`` banned
miners took the same job it ends failed rather than circling forever.
"""

from __future__ import annotations

import logging

from celery import Celery

from heurist.dispatch import (
    DeadlinePassedError,
    DispatchSigner,
    dispatch_signer,
    job_message,
    queue_for,
    send_job,
)
from heurist.ledger.middleware import LedgerMiddleware, Refused
from heurist.ledger.service import Ledger
from heurist.ledger.sweep import Sweep
from heurist.ledger.tables import Reason
from heurist.settings import Settings

log = logging.getLogger(__name__)

MAX_BANNED_ATTEMPTS = 3


def redispatch(app: Celery, ledger: Ledger, settings: Settings, job_id: str,
               signer: DispatchSigner | None = None) -> bool:
    """Send a still-queued job again, signed by ``signer`` (default: the settings' dispatch key); False (and
    the job failed) once banned miners took it too often."""
    view, params = ledger.reader.job(job_id), ledger.reader.job_params(job_id)
    if view is None or params is None or view.state.terminal:
        return False
    taken = sum(reason is Reason.BANNED for reason, _ in ledger.reader.rejections(job_id))
    if taken >= MAX_BANNED_ATTEMPTS:
        ledger.book.record_failure(job_id, f"taken {taken} times by banned miners")
        return False
    spec = ledger.catalog[view.model_id]
    sealed = ledger.reader.job_envelope(job_id)  # a private job goes again sealed, and to the private queue
    try:  # its upload URL expires at the deadline: an overdue job cannot be done any more
        message = job_message(job_id, spec.id, params, view.output_key, view.deadline_at, ledger.store,
                              settings.presign_expiry_s, now=ledger.clock(), private=sealed)
    except DeadlinePassedError:
        ledger.book.record_failure(job_id, "its deadline passed before it could be sent again")
        return False
    send_job(app, (signer or dispatch_signer(settings)).sign(message), queue_for(spec, sealed))
    log.info("job %s sent again: a banned miner took it (%d time(s))", job_id, taken)
    return True


class ResendOnReport(LedgerMiddleware):
    """A failure report or a bad result never ends a job (``heurist.ledger.failures``): it is given to another
    miner at once, spending the stranded-job sweep's re-send budget (``Sweep.resend_now``). Once that is spent
    the job waits for a completion or its deadline, where the sweep fails it."""

    def __init__(self, sweep: Sweep) -> None:
        self.sweep = sweep

    def after_refuse(self, ledger: Ledger, refused: Refused) -> None:
        if refused.marks_job:
            self.sweep.resend_now(refused.job_id)

    def after_report(self, ledger: Ledger, job_id: str, miner: str) -> None:
        self.sweep.resend_now(job_id)


class Redispatch(LedgerMiddleware):
    """After a completion refused because its miner is banned, send the job to the queue again."""

    def __init__(self, app: Celery, settings: Settings) -> None:
        self.app, self.settings = app, settings
        self.signer = dispatch_signer(settings)

    def after_refuse(self, ledger: Ledger, refused: Refused) -> None:
        if refused.reason is Reason.BANNED:
            redispatch(self.app, ledger, self.settings, refused.job_id, self.signer)
