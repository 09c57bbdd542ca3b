"""Thin Celery task contracts. The work is done in ``workers`` (miner) and ``heurist.ledger`` (ledger)."""
