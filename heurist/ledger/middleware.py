"""Ledger middleware: the hooks that follow a verdict (metric flags, audit sampling, redispatch), one class each.

The ledger calls each middleware in order: inside an acceptance's transaction (``within_accept``: what must
commit with the credit, such as the audit sample), then after each verdict is committed, with what verification
already loaded: the claim, the job's parameters, the miner's registered device and its standing before this
completion. So a hook costs no database read of its own (three re-reads per completion had cut the job path from
99 to 60 jobs/s). An ``after_*`` hook that raises is logged and the committed verdict stands. The audit's
middleware (``heurist.audit.middleware``) builds on these types; the ledger never imports it: whoever starts the
ledger consumer installs it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from heurist.catalog import ModelSpec
from heurist.jobs import Completion, DeviceInfo, ImageParams, TextParams
from heurist.ledger.standing import MinerStanding
from heurist.ledger.tables import Reason

if TYPE_CHECKING:
    from heurist.ledger.reader import JobView
    from heurist.ledger.service import Ledger


@dataclass
class Accepted:
    """A completion just accepted for the first time. ``standing`` is the miner's before it; a middleware
    that changes the standing (a metric flag) updates it here for the ones after it."""

    job_id: str
    miner: str
    spec: ModelSpec
    params: ImageParams | TextParams
    claim: Completion
    wall_s: float  # job created -> completion received, by the ledger's clock
    registered_device: DeviceInfo | None
    standing: MinerStanding
    late: bool
    at: float = 0.0  # when the ledger received it (its clock)
    notify_key: str | None = None  # the job's client's key on heurist.verdicts (heurist.verdicts), if any
    outbox_keys: list[str] = field(default_factory=list)  # outbox rows written with the credit (heurist.outbox)
    view: JobView | None = None  # the job as the credit committed it (after it: the verdict notice's contents)


@dataclass(frozen=True)
class Refused:
    """A completion refused (not a duplicate): whose, for which job, and why."""

    job_id: str
    miner: str | None
    reason: Reason
    marks_job: bool = False  # a registered miner's bad result for a job still open: worth another miner's try


class LedgerMiddleware:
    """Hooks after a verdict; override what you need."""

    def within_accept(self, session: Session, accepted: Accepted) -> None:
        """Inside the credit's transaction, before it commits: write here what must never be lost if the ledger
        dies right after the credit (an audit sample: an ``heurist.outbox`` row). Raising rolls the credit back,
        and the completion is retried whole."""

    def after_accept(self, ledger: Ledger, accepted: Accepted) -> None:
        """After a first acceptance has committed (duplicates never reach here)."""

    def after_refuse(self, ledger: Ledger, refused: Refused) -> None:
        """After a refusal that is not a duplicate."""

    def after_report(self, ledger: Ledger, job_id: str, miner: str) -> None:
        """After a registered miner's signed failure report for a job still open (``heurist.ledger.failures``)."""
