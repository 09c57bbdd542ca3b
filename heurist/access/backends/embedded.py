"""The embedded SQLite broker has no users: every miner shares its URL and a revoke cannot cut one off.

Revokes are still recorded (``broker-access.json`` beside the broker file) so ``heurist broker miners``
shows them, and each is logged as a warning: on this broker the ledger's ban, which refuses the miner's
hellos and completions, is the only enforcement. Use RabbitMQ where miners are not trusted.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from heurist.access.backend import BrokerAccess, BrokerAccessError, MinerAccount, MinerCredentials, checked_address
from heurist.settings import Settings

log = logging.getLogger(__name__)

SHARED_USER = "(shared)"


class EmbeddedAccess(BrokerAccess):
    """Miner records for the embedded broker, kept in a small JSON file: address -> revoked."""

    def __init__(self, broker_url: str, state_file: Path) -> None:
        self.broker_url = broker_url
        self.state_file = state_file

    @classmethod
    def from_settings(cls, settings: Settings) -> EmbeddedAccess:
        return cls(settings.resolved_broker_url(), settings.data_dir.resolve() / "broker-access.json")

    def add_miner(self, address: str, max_vram_gb: int | None = None) -> MinerCredentials:
        address = checked_address(address)
        state = self._load()
        if state.get(address):
            raise BrokerAccessError(f"miner {address} is revoked; `heurist broker restore {address}` first")
        self._save({**state, address: False})
        log.warning("the embedded broker has no per-miner users: miner %s gets the shared broker URL", address)
        return MinerCredentials(address=address, user=SHARED_USER, password="", broker_url=self.broker_url)

    def revoke(self, address: str) -> None:
        address = checked_address(address)
        self._save({**self._load(), address: True})
        log.warning("miner %s revoked, but the embedded broker has no per-user permissions: it can still take "
                    "jobs; the ledger's ban (its completions are refused and credit nothing) is the enforcement. "
                    "Use RabbitMQ (HEURIST_BROKER_URL=amqp://...) to cut a miner off the broker", address)

    def restore(self, address: str) -> None:
        address = checked_address(address)
        self._save({**self._load(), address: False})

    def set_private(self, address: str, allowed: bool) -> None:
        """Nothing to change: on this broker every miner reads every queue, the private ones included."""
        log.info("miner %s %s for privacy; the embedded broker has no per-user permissions, so every miner can "
                 "read the private queues here: only the key-release nodes' ACC check keeps the jobs from others",
                 checked_address(address), "approved" if allowed else "no longer approved")

    def forget(self, address: str) -> None:
        address = checked_address(address)
        self._save({k: v for k, v in self._load().items() if k != address})

    def list_miners(self) -> list[MinerAccount]:
        return [MinerAccount(address=address, user=SHARED_USER, active=not revoked, connections=None)
                for address, revoked in sorted(self._load().items())]

    def _load(self) -> dict[str, bool]:
        try:
            return {str(k): bool(v) for k, v in json.loads(self.state_file.read_text()).items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, AttributeError) as err:
            raise BrokerAccessError(f"cannot read {self.state_file}: {err}; delete it to start over") from None

    def _save(self, state: dict[str, bool]) -> None:
        """Write atomically: the auditor (a ban) and an operator (the CLI) may write at the same time."""
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
        tmp.replace(self.state_file)
