"""Task names: the contract between client, miner and ledger. Senders use these strings, so the client
and gateway never import miner code (and never import torch)."""

RUN_JOB = "heurist.miner.run_job"
RECORD_COMPLETION = "heurist.ledger.record_completion"
RECORD_FAILURE = "heurist.ledger.record_failure"
REGISTER_MINER = "heurist.ledger.register_miner"
RECORD_HEARTBEAT = "heurist.ledger.record_heartbeat"
REGISTER_PRIVACY = "heurist.ledger.register_privacy"  # a privacy miner's signed registration (heurist.privacy)
AUDIT_JOB = "heurist.audit.replay_job"

# What each role's worker runs, and nothing else (``heurist.celery_app.only_tasks``): Celery's built-ins
# (``celery.group``, ``celery.chain``, ``celery.chord``, ...) are not among them.
MINER_TASKS = (RUN_JOB,)
LEDGER_TASKS = (REGISTER_MINER, RECORD_COMPLETION, RECORD_FAILURE, RECORD_HEARTBEAT, REGISTER_PRIVACY)
AUDIT_TASKS = (AUDIT_JOB,)
