"""What each role's tasks and bootsteps use, typed and held in one place on its Celery app.

A worker builds its services before it consumes anything (the ledger and its uptime book, the miner's
runtime and heartbeats, the auditor) and hands them to ``heurist.celery_app.create_app``; a task reaches
them through ``heurist.celery_app.services(self.app)``, never a module global or an untyped attribute.
Each service is a small Protocol of what the tasks call, so this module (which the client imports through
the Celery app) imports neither the ledger nor anything from ``workers``, and so never torch. Reading a
service the role does not have raises ``MissingServiceError`` naming both.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar, cast

from kombu.pools import ProducerPool

from heurist.errors import HeuristError
from heurist.jobs import JobMessage, SignedCompletion, SignedFailure, SignedHeartbeat, SignedHello
from heurist.privacy.messages import SignedRegistration

T = TypeVar("T")


class Verdict(Protocol):
    """The ledger's verdict on a completion (``heurist.ledger.service.CompletionVerdict``), as its task reports it."""

    def report(self) -> dict[str, Any]:
        """job_id, accepted, duplicate, reason and points, ready for JSON."""


class LedgerService(Protocol):
    """The ledger's write side, as its tasks use it."""

    clock: Callable[[], float]

    def record_completion(self, signed: SignedCompletion, sender: str | None = None, *,
                          received_at: float | None = None) -> Verdict: ...

    def record_failure(self, job_id: str, reason: str) -> None: ...

    def report_failure(self, signed: SignedFailure, sender: str | None = None) -> bool: ...

    def register_miner(self, signed: SignedHello, sender: str | None = None) -> object: ...

    def register_privacy(self, signed: SignedRegistration, sender: str | None = None, *, policy_version: str,
                         tee_verifier: str | None = None) -> str | None: ...


class UptimeService(Protocol):
    """The heartbeat book (``heurist.ledger.uptime.UptimeBook``)."""

    def record(self, signed: SignedHeartbeat, sender: str | None = None) -> object: ...


class MinerService(Protocol):
    """The miner runtime (``workers.miner.runtime.MinerRuntime``): loaded pipelines, one job at a time."""

    def admit(self, payload: Any) -> JobMessage:
        """The job in a received message; raises ``heurist.errors.JobRefused`` if this miner must not run it."""

    def execute(self, job: JobMessage, producers: ProducerPool | None = None,
                timelimit: tuple[float | None, float | None] | list[float | None] | None = None,
                ) -> SignedCompletion:
        """Run an admitted job within its time limits (``timelimit``: the message's Celery header)."""

    def failure(self, job: JobMessage, error: BaseException) -> SignedFailure: ...


class AuditorService(Protocol):
    """The auditor (``workers.audit.auditor.Auditor``): replays one sampled job and records the verdict."""

    def audit(self, job_id: str) -> dict[str, Any]: ...


class HeartbeatService(Protocol):
    """The miner's heartbeat sender (``workers.miner.heartbeat.HeartbeatSender``), run by a bootstep."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


class MissingServiceError(HeuristError):
    """A task or bootstep asked for a service its app's role does not have."""


class Service(Generic[T]):
    """One service on ``Services``: read, it is the role's own or ``MissingServiceError`` naming both."""

    def __set_name__(self, owner: type[Services], name: str) -> None:
        self.name = name

    def __get__(self, services: Services, owner: type[Services] | None = None) -> T:
        found = services.provided.get(self.name)
        if found is None:
            raise MissingServiceError(f"the {services.role} app has no {self.name.replace('_', ' ')} service: only "
                                      f"a worker built with one runs the tasks that use it")
        return cast(T, found)

    def __set__(self, services: Services, value: T) -> None:
        services.provided[self.name] = value


class Services:
    """One role's services, each None except on the role that has it; ``role`` names the app in errors.
    ``heartbeats`` may be set later: its sender sends through the app it is set on."""

    ledger = Service[LedgerService]()
    uptime = Service[UptimeService]()
    miner_runtime = Service[MinerService]()
    auditor = Service[AuditorService]()
    heartbeats = Service[HeartbeatService]()

    def __init__(self, role: str, *, ledger: LedgerService | None = None, uptime: UptimeService | None = None,
                 miner_runtime: MinerService | None = None, auditor: AuditorService | None = None,
                 heartbeats: HeartbeatService | None = None) -> None:
        self.role = role
        self.provided: dict[str, object] = {"ledger": ledger, "uptime": uptime, "miner_runtime": miner_runtime,
                                            "auditor": auditor, "heartbeats": heartbeats}
