"""The ledger's read side: jobs, points and miners as clients, the gateway, reports and the exporter see them.

``LedgerReader`` needs only an engine: no catalog, no object storage, no verification. Whoever only reads
(the client's polling, the gateway, ``heurist points``, the credit sweep) depends on it alone; the writer
(``heurist.ledger.service.Ledger``) keeps one as ``ledger.reader``. Points are sums of all entries: they
count escrowed points, net of clawbacks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from eth_utils import to_checksum_address
from pydantic import ConfigDict, TypeAdapter
from sqlalchemy import Engine, Select, func, select

from heurist.catalog import JobKind
from heurist.db.base import ID_LEN
from heurist.db.engine import read_factory, session_factory
from heurist.jobs import ImageParams, JobParams, JobState, PrivateEnvelope, TextParams
from heurist.ledger.pools import PoolPoints, epoch_points, points_by_pool
from heurist.ledger.tables import (
    Audit,
    AuditOutcome,
    CompletionRow,
    Job,
    Miner,
    PointsEntry,
    Reason,
    Rejection,
)
from heurist.points import from_micro

PARAMS: TypeAdapter[ImageParams | TextParams] = TypeAdapter(JobParams)  # type: ignore[arg-type]


def sum_micro(value: Any) -> int:
    """SUM over BIGINT is NUMERIC on PostgreSQL (a Decimal); always an int here."""
    return int(value or 0)


@dataclass(frozen=True)
class JobView:
    """A job as the ledger knows it: for clients polling results, and in a verdict notice (``heurist.verdicts``)."""

    # A notice's view (heurist.verdicts.notice) holds these fields and nothing else.
    __pydantic_config__: ClassVar[ConfigDict] = ConfigDict(extra="forbid", allow_inf_nan=False)

    job_id: str
    model_id: str
    kind: JobKind
    state: JobState
    output_key: str
    points_micro: int
    miner: str | None
    output_sha256: str | None
    input_tokens: int | None  # as the miner reported them
    output_tokens: int | None
    error: str | None
    created_at: float
    deadline_at: float
    finished_at: float | None
    frozen_key: str | None = None  # the credited bytes, where no URL can write (None: not frozen)
    resends: int = 0  # times the stranded-job sweep sent it again (``heurist.ledger.sweep``)
    private: bool = False  # a private job: its output is ciphertext only its client opens (heurist.privacy)
    notify_key: str | None = None  # where its client listens for the verdict (heurist.verdicts); None: it polls

    @property
    def points(self) -> float:
        return from_micro(self.points_micro)

    @property
    def stored_key(self) -> str:
        """Where to read the credited output: its frozen copy (``heurist.storage.freeze``), or for a
        completion accepted before outputs were frozen, the job's output key (check it against the sha256)."""
        return self.frozen_key or self.output_key

    @property
    def tokens(self) -> int | None:
        if self.input_tokens is None or self.output_tokens is None:
            return None
        return self.input_tokens + self.output_tokens


def job_view(job: Job, completion: CompletionRow | None, micro: Any) -> JobView:
    """A job's row, its completion's and the sum of its points entries, as a client sees them (also how the
    ledger describes a credit it just committed, in its notice: ``Ledger._credited``)."""
    return JobView(
        job_id=job.id, model_id=job.model_id, kind=job.kind, state=job.state, output_key=job.output_key,
        points_micro=sum_micro(micro), miner=job.miner_address,
        output_sha256=completion.output_sha256 if completion else None,
        input_tokens=completion.input_tokens if completion else None,
        output_tokens=completion.output_tokens if completion else None,
        error=job.error, created_at=job.created_at, deadline_at=job.deadline_at,
        finished_at=job.finished_at, frozen_key=completion.frozen_key if completion else None,
        resends=job.resends, private=job.sealed is not None, notify_key=job.notify_key,
    )


@dataclass(frozen=True)
class MinerPoints:
    """A registered miner's standing: accepted completions and the sum of its points entries."""

    address: str
    jobs: int
    points_micro: int

    @property
    def points(self) -> float:
        return from_micro(self.points_micro)


@dataclass(frozen=True)
class LedgerTotals:
    jobs: dict[JobState, int]
    points_total_micro: int
    miners: int
    rejections: int

    @property
    def points_total(self) -> float:
        return from_micro(self.points_total_micro)


class LedgerReader:
    """Reads the ledger; never writes. Thread-safe: a session per call. ``clock`` is the ledger's notion
    of now, for callers that compare it with the times the ledger recorded (the credit sweep)."""

    def __init__(self, engine: Engine, clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self.clock = clock
        self._sessions = session_factory(engine)
        self._reads = read_factory(engine)  # one-statement reads (``jobs``): no transaction on PostgreSQL

    def job_params(self, job_id: str) -> ImageParams | TextParams | None:
        """The parameters recorded at submit time: what an auditor replays (never the miner's claim)."""
        with self._sessions() as session:
            raw = session.scalar(select(Job.params).where(Job.id == job_id))
        return None if raw is None else PARAMS.validate_python(raw)

    def job_envelope(self, job_id: str) -> PrivateEnvelope | None:
        """A private job's envelope (what every re-send carries again); None for a public or unknown job."""
        with self._sessions() as session:
            raw = session.scalar(select(Job.sealed).where(Job.id == job_id))
        return None if raw is None else PrivateEnvelope.model_validate(raw)

    def job(self, job_id: str) -> JobView | None:
        """The job's state, output, points and miner; None if the ledger never recorded it."""
        found = self.jobs([job_id])
        return found[0] if found else None

    def jobs(self, job_ids: Sequence[str]) -> list[JobView]:
        """Many jobs in one query (those the ledger knows; any order): what a client polling a batch needs."""
        points = (select(func.sum(PointsEntry.amount_micro)).where(PointsEntry.job_id == Job.id)
                  .correlate(Job).scalar_subquery())
        stmt = (select(Job, CompletionRow, points).outerjoin(CompletionRow, CompletionRow.job_id == Job.id)
                .where(Job.id.in_(list(job_ids))))
        with self._reads() as session:
            rows = session.execute(stmt).all()
        return [job_view(row[0], row[1], row[2]) for row in rows]

    def audit_failed(self, job_id: str) -> bool:
        """Whether any auditor failed this job's credited output (then its client is refunded:
        ``heurist.credits.reconcile``)."""
        with self._sessions() as session:
            return session.scalar(select(Audit.id).where(Audit.job_id == job_id[:ID_LEN],
                                                         Audit.outcome == AuditOutcome.FAILED).limit(1)) is not None

    def recent_jobs(self, limit: int = 20, state: JobState | None = None, resent: bool = False) -> list[JobView]:
        """The newest jobs first (``heurist jobs``): of one state, or only those the sweep sent again."""
        points = (select(func.sum(PointsEntry.amount_micro)).where(PointsEntry.job_id == Job.id)
                  .correlate(Job).scalar_subquery())
        stmt = select(Job, CompletionRow, points).outerjoin(CompletionRow, CompletionRow.job_id == Job.id)
        if state is not None:
            stmt = stmt.where(Job.state == state)
        if resent:
            stmt = stmt.where(Job.resends > 0)
        with self._sessions() as session:
            rows = session.execute(stmt.order_by(Job.created_at.desc()).limit(limit)).all()
        return [job_view(row[0], row[1], row[2]) for row in rows]

    def miner_points(self) -> list[MinerPoints]:
        """Every registered miner with its accepted completions and points, most points first."""
        jobs = (select(func.count()).where(CompletionRow.miner_address == Miner.address)
                .correlate(Miner).scalar_subquery())
        points = (select(func.sum(PointsEntry.amount_micro)).where(PointsEntry.miner_address == Miner.address)
                  .correlate(Miner).scalar_subquery())
        stmt: Select[Any] = select(Miner.address, jobs, points)
        with self._sessions() as session:
            rows: list[Any] = list(session.execute(stmt).all())
        result = [MinerPoints(address=a, jobs=int(j or 0), points_micro=sum_micro(p)) for a, j, p in rows]
        return sorted(result, key=lambda m: (-m.points_micro, m.address))

    def points_by_pool(self, until: float | None = None, since: float | None = None) -> dict[str, PoolPoints]:
        """Each miner's credited points of entries created in ``[since, until)``, split into the Waifu (image)
        and Llama (text) pools; an escrow release by the held balance it moved (``heurist.ledger.pools``)."""
        with self._sessions() as session:
            return points_by_pool(session, since=since, until=until)

    def epoch_points(self, since: float, until: float) -> dict[str, int]:
        """Credited micro-points per miner (all pools, net, may be negative) created in ``[since, until)``."""
        with self._sessions() as session:
            return epoch_points(session, since, until)

    def totals(self) -> LedgerTotals:
        """Jobs by state (every state present), points credited overall, miners and rejections."""
        with self._sessions() as session:
            counts = session.execute(select(Job.state, func.count()).group_by(Job.state)).tuples().all()
            total = session.scalar(select(func.sum(PointsEntry.amount_micro)))
            miners = session.scalar(select(func.count()).select_from(Miner))
            rejections = session.scalar(select(func.count()).select_from(Rejection))
        by_state = dict(counts)
        return LedgerTotals(jobs={s: int(by_state.get(s, 0)) for s in JobState},
                            points_total_micro=sum_micro(total), miners=int(miners or 0),
                            rejections=int(rejections or 0))

    def points_entries(self, job_id: str) -> int:
        """How many points entries a job has (1 after a credit, however often it was delivered)."""
        with self._sessions() as session:
            return int(session.scalar(select(func.count()).select_from(PointsEntry)
                                      .where(PointsEntry.job_id == job_id)) or 0)

    def rejections(self, job_id: str) -> list[tuple[Reason, str | None]]:
        """The refusals recorded for a job id, oldest first: (reason, miner)."""
        with self._sessions() as session:
            rows = session.execute(select(Rejection.reason, Rejection.miner_address)
                                   .where(Rejection.job_id == job_id[:ID_LEN]).order_by(Rejection.id)).all()
        return [(r, m) for r, m in rows]

    def broker_user(self, address: str) -> str | None:
        """The broker user (operator) miner ``address``'s key is bound to; None if unknown, or if its hellos came
        without one (the embedded broker, a trusted user). A streamed answer must come from this user."""
        try:
            checksummed = to_checksum_address(address)
        except ValueError:
            return None
        with self._sessions() as session:
            return session.scalar(select(Miner.broker_user).where(Miner.address == checksummed))

    def operator_of(self, address: str) -> str:
        """The operator address whose broker user miner ``address`` is bound to (a GPU worker's key belongs to
        its box's operator); the address itself when unbound (the embedded broker) or unknown."""
        from heurist.access.backend import address_of

        user = self.broker_user(address)
        return (address_of(user) if user else None) or address

    def is_registered(self, address: str) -> bool:
        """Whether a miner with this address has sent a valid signed hello."""
        try:
            checksummed = to_checksum_address(address)
        except ValueError:
            return False
        with self._sessions() as session:
            return session.get(Miner, checksummed) is not None


__all__ = ["PARAMS", "JobView", "LedgerReader", "LedgerTotals", "MinerPoints", "PoolPoints", "sum_micro"]
