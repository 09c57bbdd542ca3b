"""The trusted ledger: verifies signed completions, credits points exactly once, keeps audits and uptime.

Write side ``service.Ledger``, read side ``reader.LedgerReader``, job records ``jobbook.JobBook``; it never
imports ``heurist.audit`` (which holds the policy that reads and writes through it).
"""
