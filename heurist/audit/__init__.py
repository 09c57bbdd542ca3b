"""The audit's trusted side: which completions to re-check (``sampler``), whether reported metrics are
plausible (``metrics``), the ledger middleware that flags and samples (``middleware``), and reports.

This package may import ``heurist.ledger``; the ledger never imports it. Verdicts, penalties and a miner's
standing are ledger data (``heurist.ledger.audit_service``, ``heurist.ledger.standing``). Nothing here
imports torch."""

from heurist.audit.sampler import AuditSampler

__all__ = ["AuditSampler"]
