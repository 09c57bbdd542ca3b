"""``heurist demo --private``: private jobs end to end, with 3 key-release nodes and a privacy miner.

What it starts, beyond the plain demo's ledger and storage: 3 key-release nodes at a threshold of 2 (each its own
process and key: ``heurist.embedded_privacy``), one privacy miner (`heurist miner --private`, which signs the
policy and publishes its X25519 key at start), and an auditor with its own key. The operator's part, approving the
miner and the auditor (`heurist privacy approve ADDR --key-file approver.key`), is done here once their
registrations are recorded, signed by an approver key the nodes are configured with. Then
one private text job and one private image job go through the network under the default ACC (privacy-enabled
required); the client decrypts both answers, and the auditor, admitted by the same ACC, replays them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from sqlalchemy import Engine, select

from heurist.client import Client, JobResult
from heurist.db.engine import session_scope
from heurist.embedded import EmbeddedNetwork, wait_until
from heurist.embedded_privacy import start_keyrelease
from heurist.identity import Wallet
from heurist.privacy.keyrelease.registry import approve
from heurist.privacy.tables import Registration
from heurist.signing import Domain

DEFAULT_PROMPT = "Name three primary colors."
IMAGE_PROMPT = "a lighthouse at dawn"
REGISTRATION_TIMEOUT_S = 600.0


class PrivateDemo:
    """The private demo's parts on one embedded network."""

    def __init__(self, net: EmbeddedNetwork) -> None:
        self.net = net
        self.approver = Wallet.create()  # the operator's approver key, held in memory for the demo's run
        self.miner: Wallet | None = None
        self.auditor: Wallet | None = None

    def start(self) -> Wallet:
        """Key-release nodes first (miners and clients need their keys), then the privacy miner and the auditor.
        The nodes count only approvals the demo's approver key signed (``HEURIST_PRIVACY_APPROVER``)."""
        self.net.base = self.net.base.model_copy(update={"privacy_approver": self.approver.address})
        start_keyrelease(self.net, count=3, threshold=2)
        self.miner = self.net.start_miner(name="private-miner", private=True)
        self.auditor, key_file = self.net.new_key_file("auditor")
        self.net.start_auditor(key_file=key_file)
        return self.miner

    def approve(self, engine: Engine) -> None:
        """The operator's approval of the miner and the auditor, once each has registered."""
        assert self.miner is not None and self.auditor is not None
        for party in (self.miner, self.auditor):
            wait_until(lambda address=party.address: _registered(engine, address), REGISTRATION_TIMEOUT_S,
                       f"{party.address} to register for private jobs", check=self.net.check_alive)
            approve(engine, party.address, True, "demo operator", "heurist demo --private", time.time(),
                    signer=self.approver, domain=Domain.of(self.net.settings()))

    def run(self, client: Client, prompt: str, max_tokens: int, timeout: float) -> list[JobResult]:
        """One private text job and one private image job, under the default ACC; their results."""
        handles = [client.submit_text(prompt, model="smollm2-135m", max_tokens=max_tokens, private=True),
                   client.submit_image(IMAGE_PROMPT, model="tiny-sd", seed=7, private=True)]
        return [handle.result(timeout=timeout) for handle in handles]


def private_summary(results: list[JobResult], saved: dict[str, str]) -> dict[str, Any]:
    """The keys the JSON line ends with: ``completed``, ``failed`` and ``private_jobs``."""
    return {
        "completed": sum(r.state.has_output for r in results),
        "failed": sum(not r.state.has_output for r in results),
        "private_jobs": [{"job_id": r.job_id, "model": r.model_id, "state": r.state.value, "points": r.points,
                          "miner": r.miner, "file": saved.get(r.job_id), "error": r.error} for r in results],
    }


def show_private(summary: dict[str, Any], out: Console) -> None:
    """The decrypted answers, which only the client (and the miner and auditor the ACC admitted) could read."""
    for job in summary["private_jobs"]:
        if job["file"] is None:
            out.print(f"private job {job['job_id']} {job['state']}: {escape(str(job['error']))}", soft_wrap=True)
        elif str(job["file"]).endswith(".txt"):
            answer = Path(job["file"]).read_text().strip()
            out.print(f"private answer, decrypted by the client: [bold]{escape(answer)}[/]", soft_wrap=True)
        else:
            out.print(f"private image, decrypted by the client: {escape(str(job['file']))}", soft_wrap=True)
    out.print("the broker, the store and the ledger saw only ciphertext: see README, 'Private jobs'", soft_wrap=True)


def _registered(engine: Engine, address: str) -> bool:
    with session_scope(engine) as session:
        return session.scalar(select(Registration.id).where(Registration.address == address).limit(1)) is not None


__all__ = ["DEFAULT_PROMPT", "PrivateDemo", "private_summary", "show_private"]
