"""Auditing private jobs: only an auditor the job's ACC admits reads it, through the same key release as a miner.

An auditor started with ``--key-file`` has an EVM identity. At start it records its own signed registration
(it is trusted and holds the database, so it writes the row the ledger writes for a miner's), and an operator
approves it like a privacy miner (`heurist privacy approve ADDR`). For a sampled private job it then asks the
key-release nodes for t shares; each node checks the job's ACC against this auditor, exactly as for a miner.

* Admitted: the auditor decrypts the parameters and the frozen output, then audits the plaintext like any job,
  token counts included (the ledger could only bound a private text job's counts: ``heurist.ledger.token_counts``).
  A frozen output that does not decrypt under the job's key fails the audit as undecodable: the miner stored it.
* Refused (an ACC that names only the miner's address, a stake the auditor lacks, fewer than t nodes up): the job
  is not audited and nothing is recorded against the miner; the reason is logged. A client that keeps auditors
  out gives up the audit's protection for its own jobs, and the miner's new-miner escrow waits for audits of its
  other jobs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace

from pydantic import TypeAdapter, ValidationError
from sqlalchemy import Engine

from heurist.errors import HeuristError
from heurist.identity import Wallet
from heurist.jobs import JobParams, PrivateEnvelope
from heurist.ledger.claims import AcceptedClaim
from heurist.privacy import envelope as crypto
from heurist.privacy import metering
from heurist.privacy.keyrelease.registry import record_trusted
from heurist.privacy.shares import ShareGatherer, registration
from heurist.settings import Settings
from heurist.signing import Domain

log = logging.getLogger(__name__)
PARAMS: TypeAdapter[JobParams] = TypeAdapter(JobParams)  # type: ignore[arg-type]


class NotAuditable(HeuristError):
    """This auditor may not read this private job (or cannot now); nothing is recorded."""


@dataclass(frozen=True)
class PrivateAudits:
    """What the auditor needs for private jobs: its key-release client."""

    gatherer: ShareGatherer

    @classmethod
    def start(cls, settings: Settings, wallet: Wallet, engine: Engine) -> PrivateAudits:
        """Record this auditor's registration and build its key-release client."""
        signed = registration(wallet, settings.privacy_policy_version, Domain.of(settings))
        record_trusted(engine, signed, time.time())
        log.warning("auditor %s registered for private jobs; an operator approves it with `heurist privacy approve "
                    "%s`", wallet.address, wallet.address)
        return cls(ShareGatherer.from_settings(settings, wallet))

    def open(self, claim: AcceptedClaim, sealed: PrivateEnvelope) -> tuple[AcceptedClaim, bytes]:
        """The claim with the job's real parameters, and the job's key; ``NotAuditable`` if the key is not
        released to this auditor, or the client's envelope does not open (not the miner's doing)."""
        try:
            key = self.gatherer.key_for(claim.job_id, sealed, claim.model_id)
        except crypto.PrivacyError as err:
            raise NotAuditable(f"job {claim.job_id} is private and its key was not released to this auditor: "
                               f"{err}") from None
        try:
            real = PARAMS.validate_json(crypto.open_params(key, sealed, job_id=claim.job_id,
                                                           model_id=claim.model_id))
            metering.check(claim.params, real)
        except ValidationError as err:  # its text quotes the input: the decrypted prompt
            raise NotAuditable(f"job {claim.job_id}: its parameters do not open: {first_error(err)}") from None
        except crypto.PrivacyError as err:
            raise NotAuditable(f"job {claim.job_id}: its parameters do not open: {err}") from None
        return replace(claim, params=real), key


def first_error(err: ValidationError) -> str:
    """A validation error as "where: what", without the input: ``str(err)`` quotes ``input_value=``, which for a
    private job is decrypted plaintext (a prompt, an answer) and would land in a log or an audit's detail."""
    if not err.errors():
        return "invalid"
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "value"
    return f"{where}: {first['msg']}"


__all__ = ["NotAuditable", "PrivateAudits", "first_error"]
