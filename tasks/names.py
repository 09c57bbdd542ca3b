"""Task names: the contract between client, miner and ledger. Senders use these strings, so the client
and gateway never import miner code (and never import torch)."""

RUN_JOB = "heurist.miner.run_job"
RECORD_COMPLETION = "heurist.ledger.record_completion"
RECORD_FAILURE = "heurist.ledger.record_failure"
REGISTER_MINER = "heurist.ledger.register_miner"
RECORD_HEARTBEAT = "heurist.ledger.record_heartbeat"
AUDIT_JOB = "heurist.audit.replay_job"
