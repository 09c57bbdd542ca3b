"""Privacy-enabled miners: end-to-end encrypted jobs whose key only t of n key-release nodes can give out, each
after checking the job's access-control condition against the ledger (issue 16; threat model in the README).

``acc`` (the condition language), ``envelope`` (the cryptography), ``messages`` (what is signed), ``registry``
(registrations and approvals), ``client`` (sealing and opening jobs), ``shares`` (a miner gathering shares) and
``keyrelease`` (the nodes, trusted side only).
"""
