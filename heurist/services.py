"""What each role's tasks and bootsteps use, typed and held in one place on its Celery app.

A worker builds its services before it consumes anything (the ledger and its uptime book, the miner's
runtime and heartbeats, the auditor) and hands them to ``heurist.celery_app.create_app``; a task reaches
them through ``heurist.celery_app.services(self.app)``, never a module global or an untyped attribute.
Each service is a small Protocol of what the tasks call, so this module (which the client imports through
the Celery app) imports neither the ledger nor anything from ``workers``, and so never torch. Reading a
service the role does not have raises ``MissingServiceError`` naming both.
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar

from kombu.pools import ProducerPool

from heurist.errors import HeuristError
from heurist.jobs import JobMessage, SignedCompletion, SignedHeartbeat, SignedHello

T = TypeVar("T")


class CompletionOutcome(Protocol):
    """What the ledger task reports of a completion's verdict (``heurist.ledger``'s ``CompletionVerdict``)."""

    @property
    def job_id(self) -> str: ...

    @property
    def accepted(self) -> bool: ...

    @property
    def duplicate(self) -> bool: ...

    @property
    def reason(self) -> object: ...

    @property
    def points(self) -> float: ...


class LedgerService(Protocol):
    """The ledger's write side, as its tasks use it."""

    def record_completion(self, signed: SignedCompletion) -> CompletionOutcome: ...

    def record_failure(self, job_id: str, reason: str) -> None: ...

    def register_miner(self, signed: SignedHello) -> object: ...


class UptimeService(Protocol):
    """The heartbeat book (``heurist.ledger.uptime.UptimeBook``)."""

    def record(self, signed: SignedHeartbeat) -> object: ...


class MinerService(Protocol):
    """The miner runtime (``workers.miner.runtime.MinerRuntime``): loaded pipelines, one job at a time."""

    def execute(self, job: JobMessage, producers: ProducerPool | None = None) -> SignedCompletion: ...


class AuditorService(Protocol):
    """The auditor (``workers.audit.auditor.Auditor``): replays one sampled job and records the verdict."""

    def audit(self, job_id: str) -> dict[str, Any]: ...


class HeartbeatService(Protocol):
    """The miner's heartbeat sender (``workers.miner.heartbeat.HeartbeatSender``), run by a bootstep."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


class MissingServiceError(HeuristError):
    """A task or bootstep asked for a service its app's role does not have."""


class Services:
    """One role's services; each is None except on the role that has it. ``role`` names the app in errors."""

    def __init__(self, role: str, *, ledger: LedgerService | None = None, uptime: UptimeService | None = None,
                 miner_runtime: MinerService | None = None, auditor: AuditorService | None = None,
                 heartbeats: HeartbeatService | None = None) -> None:
        self.role = role
        self._ledger = ledger
        self._uptime = uptime
        self._miner_runtime = miner_runtime
        self._auditor = auditor
        self._heartbeats = heartbeats

    def _need(self, service: T | None, name: str) -> T:
        if service is None:
            raise MissingServiceError(f"the {self.role} app has no {name} service: only a worker built with one "
                                      f"runs the tasks that use it")
        return service

    @property
    def ledger(self) -> LedgerService:
        return self._need(self._ledger, "ledger")

    @property
    def uptime(self) -> UptimeService:
        return self._need(self._uptime, "uptime")

    @property
    def miner_runtime(self) -> MinerService:
        return self._need(self._miner_runtime, "miner runtime")

    @property
    def auditor(self) -> AuditorService:
        return self._need(self._auditor, "auditor")

    @property
    def heartbeats(self) -> HeartbeatService:
        return self._need(self._heartbeats, "heartbeats")

    @heartbeats.setter
    def heartbeats(self, sender: HeartbeatService) -> None:
        """Set once the app exists: the sender sends through it."""
        self._heartbeats = sender
