"""The trusted side of private jobs' key release (issue 16): registrations and approvals (``registry``), what the
ledger says of a requester (``facts``), one node's decision (``node``), its HTTP face (``server``) and its key
(``keys``).

Trusted only: a miner process never imports this package (tests/test_import_contract.py). Each of the n nodes
is its own process with its own X25519 key and reads the same ledger; t of them must each decide on their own
that a job's ACC holds before a requester can rebuild the job's key.
"""
