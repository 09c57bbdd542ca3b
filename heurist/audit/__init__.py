"""The audit's trusted side: which completions to re-check (``sampler``). Verdicts and their penalties are
ledger entries (``heurist.ledger.audit_service``). Nothing here imports torch."""

from heurist.audit.sampler import AuditSampler, MinerStanding

__all__ = ["AuditSampler", "MinerStanding"]
