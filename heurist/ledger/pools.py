"""Credited points split into the testnet's two pools: Waifu points (image jobs) and Llama points (text jobs).

The incentivized testnet converts each pool into its own share of the 50,000,000 HUE at TGE (half each by
default, ``heurist.economy``), so a miner's available points must be read per pool. Credited (available)
points are three entry kinds (``CREDITED_KINDS``): ``job_credit`` and ``clawback`` name their job, so their
pool is the job's kind — one GROUP BY over ``points_entries JOIN jobs``. ``escrow_release`` names no job:
it moves the miner's whole held balance at that moment (``AuditLedger._release_escrow``: ``held`` = the sum
of ``ESCROWED_KINDS``), so its exact split is the held balance per job kind at that moment: the ``escrow`` and
``escrow_clawback`` entries of that miner written before the release (lower id). No ``escrow_debit`` precedes
a release — the unique key ``escrow_release:<miner>`` allows one per miner — so nothing else was held. One
second GROUP BY reads those per-kind sums for every release in the window. Example: 12 points held as
8 (an sd15 image) + 4 (text), released as 12: the release adds 8 Waifu and 4 Llama points.

A credit committed on PostgreSQL after the release read the balance but with a lower id (a race the
release's read could not see before credits held their miner's row, ``heurist.ledger.locks``; rows from then
remain) would make the held sums exceed the release; then the release is split in proportion to them
(integer floor to Waifu, the remainder to Llama), so Waifu + Llama is always exactly the credited total.
Three aggregate queries in all, whatever the ledger's size; all integers, never floats.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, and_, func, select
from sqlalchemy.orm import Session, aliased

from heurist.catalog import JobKind
from heurist.ledger.tables import CREDITED_KINDS, EntryKind, Job, PointsEntry
from heurist.points import from_micro

JOB_KINDS = (EntryKind.JOB_CREDIT, EntryKind.CLAWBACK)  # credited kinds that name their job
HELD_KINDS = (EntryKind.ESCROW, EntryKind.ESCROW_CLAWBACK)  # escrowed kinds that name their job


@dataclass(frozen=True)
class PoolPoints:
    """A miner's credited (available) micro-points per pool; net of clawbacks, so either may be negative."""

    address: str
    waifu_micro: int = 0  # image jobs
    llama_micro: int = 0  # text jobs

    @property
    def credited_micro(self) -> int:
        return self.waifu_micro + self.llama_micro

    @property
    def waifu_points(self) -> float:
        return from_micro(self.waifu_micro)

    @property
    def llama_points(self) -> float:
        return from_micro(self.llama_micro)


def _window(column: Any, since: float | None, until: float | None) -> list[ColumnElement[bool]]:
    """``[since, until)`` on ``created_at``; an open end is unbounded."""
    return [*([column >= since] if since is not None else []), *([column < until] if until is not None else [])]


def _add(pools: dict[str, PoolPoints], address: str, kind: JobKind, micro: int) -> None:
    """Add to the job kind's pool (JobKind has two members: image is Waifu, text is Llama)."""
    old = pools.get(address) or PoolPoints(address)
    pools[address] = PoolPoints(address, old.waifu_micro + (micro if kind is JobKind.IMAGE else 0),
                                old.llama_micro + (micro if kind is JobKind.TEXT else 0))


def split_release(amount: int, held: dict[JobKind, int]) -> dict[JobKind, int]:
    """One release's micro-points per pool: the held balance per kind when it matches the release (always,
    but for the race in the module docstring), else in proportion to it (all to Waifu if nothing positive
    was held, which a release of ``held > 0`` rules out); the parts always sum to ``amount``."""
    image, text = held.get(JobKind.IMAGE, 0), held.get(JobKind.TEXT, 0)
    if image + text == amount:
        return {JobKind.IMAGE: image, JobKind.TEXT: text}
    base = max(image, 0) + max(text, 0)
    waifu = amount * max(image, 0) // base if base > 0 else amount
    return {JobKind.IMAGE: waifu, JobKind.TEXT: amount - waifu}


def points_by_pool(session: Session, since: float | None = None,
                   until: float | None = None) -> dict[str, PoolPoints]:
    """Every miner with credited entries created in ``[since, until)`` (unbounded ends by default): its
    Waifu and Llama micro-points. A miner with only held (escrowed) points is absent."""
    pools: dict[str, PoolPoints] = {}
    direct = (
        select(PointsEntry.miner_address, Job.kind, func.sum(PointsEntry.amount_micro))
        .join(Job, Job.id == PointsEntry.job_id)
        .where(PointsEntry.kind.in_(JOB_KINDS), *_window(PointsEntry.created_at, since, until))
        .group_by(PointsEntry.miner_address, Job.kind))
    for address, kind, micro in session.execute(direct).tuples():
        _add(pools, address, JobKind(kind), int(micro or 0))
    release, held = aliased(PointsEntry), aliased(PointsEntry)
    before = (
        select(release.id, release.miner_address, release.amount_micro, Job.kind, func.sum(held.amount_micro))
        .select_from(release)
        .outerjoin(held, and_(held.miner_address == release.miner_address, held.id < release.id,
                              held.kind.in_(HELD_KINDS)))
        .outerjoin(Job, Job.id == held.job_id)
        .where(release.kind == EntryKind.ESCROW_RELEASE, *_window(release.created_at, since, until))
        .group_by(release.id, release.miner_address, release.amount_micro, Job.kind))
    releases: dict[int, tuple[str, int, dict[JobKind, int]]] = {}
    for release_id, address, amount, kind, micro in session.execute(before).tuples():
        _, _, by_kind = releases.setdefault(release_id, (address, int(amount), {}))
        if kind is not None:
            by_kind[JobKind(kind)] = int(micro or 0)
    for address, amount, by_kind in releases.values():
        for kind, part in split_release(amount, by_kind).items():
            _add(pools, address, kind, part)
    return pools


def epoch_points(session: Session, since: float, until: float,
                 kinds: Sequence[EntryKind] = CREDITED_KINDS) -> dict[str, int]:
    """Credited micro-points per miner (all pools, net: may be negative) of the entries created in
    ``[since, until)``: what an epoch close distributes. One GROUP BY; miners without entries are absent."""
    stmt = (select(PointsEntry.miner_address, func.sum(PointsEntry.amount_micro))
            .where(PointsEntry.kind.in_(list(kinds)), *_window(PointsEntry.created_at, since, until))
            .group_by(PointsEntry.miner_address))
    return {address: int(micro or 0) for address, micro in session.execute(stmt)}


__all__ = ["PoolPoints", "epoch_points", "points_by_pool", "split_release"]
