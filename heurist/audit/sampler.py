"""Which completions to audit: a per-job coin flip, deterministic given a seed, biased by the miner's
standing. The flip is a hash of (seed, job id), never a global RNG: any ledger worker, replaying the same
job with the same seed, makes the same choice, and a miner cannot learn the choice without the seed."""

from __future__ import annotations

import hashlib
import secrets

from heurist.ledger.standing import NEW_MINER_AUDITS, MinerStanding

BASE_RATE = 0.10
NEW_MINER_RATE = 0.5
SUSPICIOUS_RATE = 1.0


def _check_rate(name: str, rate: float) -> None:
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {rate}")


class AuditSampler:
    """Decides per job whether to audit it: suspicious miners at ``suspicious_rate``, new miners at
    ``new_miner_rate``, everyone else at ``base_rate``."""

    def __init__(self, base_rate: float = BASE_RATE, new_miner_rate: float = NEW_MINER_RATE,
                 suspicious_rate: float = SUSPICIOUS_RATE, new_miner_audits: int = NEW_MINER_AUDITS,
                 seed: int | None = None) -> None:
        """``seed`` None draws a secret one: choices must not be predictable by miners."""
        for name, rate in (("base_rate", base_rate), ("new_miner_rate", new_miner_rate),
                           ("suspicious_rate", suspicious_rate)):
            _check_rate(name, rate)
        self.base_rate = base_rate
        self.new_miner_rate = new_miner_rate
        self.suspicious_rate = suspicious_rate
        self.new_miner_audits = new_miner_audits
        self.seed = secrets.randbits(64) if seed is None else seed

    def rate(self, miner: MinerStanding) -> float:
        """The audit probability for this miner's jobs: the most suspicious category wins."""
        if miner.suspicious:
            return self.suspicious_rate
        if miner.is_new(self.new_miner_audits):
            return self.new_miner_rate
        return self.base_rate

    def draw(self, job_id: str) -> float:
        """A uniform number in [0, 1) fixed by (seed, job id): 53 bits of SHA-256, like random.random()."""
        digest = hashlib.sha256(f"{self.seed}:{job_id}".encode()).digest()
        return (int.from_bytes(digest[:8], "big") >> 11) / float(1 << 53)

    def should_audit(self, job_id: str, miner: MinerStanding) -> bool:
        """Whether to audit this job (same seed, job and standing: same answer, on every worker)."""
        return self.draw(job_id) < self.rate(miner)
