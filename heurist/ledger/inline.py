"""Small outputs travel inside their signed completion, and the ledger stores them itself.

Why (measured with ``heurist bench latency`` and ``heurist bench path`` on RabbitMQ, PostgreSQL and SeaweedFS):
an uploaded output costs four S3 round trips per job, each 5-10 ms here: the miner's PUT to its presigned URL,
then on the ledger a HEAD (size, sha256, upload time), a conditional server-side COPY that freezes the verified
bytes (``heurist.storage.freeze``) and, for a text job, a GET of the frozen answer to recount its tokens. A text
answer is a few KB, so most of that time moved bytes the broker could have carried.

How: a miner sends an output of at most ``MAX_INLINE_BYTES`` (32 KiB) in ``SignedCompletion.output`` and
uploads nothing. The ledger hashes the bytes itself, so the stored sha256 and size it checks the claim against
are its own numbers, never the miner's; then it writes them with one PUT to their frozen key, a key no URL is made
for. One S3 request instead of four, and the bytes clients and auditors read were written by the trusted side.
Measured with 2 KB answers (RabbitMQ, PostgreSQL, SeaweedFS, load 3 to 4): ``bench path`` 0.73 to 0.87 of the bare
task, against 0.34 and 0.47 uploaded in the same hour; ``bench latency`` p50 4.85 to 5.01x the bare round trip,
against 5.95x uploaded.

What does not change: the signature covers the claim (``output_sha256``, ``output_bytes``), so the bytes need
no signature of their own, and every check runs in the same order (``heurist.ledger.verify``). The job's mutable
key is never read for an inline completion, so whatever someone writes there with the job's URL is ignored.
A larger field makes the message malformed (dead-lettered, ``heurist.deadletters``).

The PUT runs beside the credit (``store_inline``): started by the last check, awaited by the credit's transaction
just before it commits (``Attempt.wait_stored``), so a credited job's bytes are always in storage and a PUT that
fails rolls the credit back (retried as an outage). In a trace of ``heurist bench latency`` the PUT took 3.0 ms
before the credit; beside it, it made the credit 1.0 ms longer: 2 ms off each job. S3 must never hold a database
lock for long, so the transaction waits at most ``PUT_WAIT_IN_CREDIT_S`` (0.1 s): past that it rolls back with
``PutPending`` and the delivery's own thread waits for its PUT, holding nothing, then credits again. A slow store
thus never holds SQLite's one write lock, a batch's rows, or the batch thread that credits every other delivery
(``heurist.ledger.batch``). The one thing a PUT beside the credit can leave: the bytes of a completion that passed
every check but lost its credit to another delivery of the same job (a duplicate, a job ended meanwhile), at their
own content-addressed frozen key, which no row names and no URL reaches (a race that left the same before, with the
PUT ahead of the credit).

Lateness: an inline output has no upload time by the store's clock, so it is judged by when the ledger received
it (``Attempt.uploaded_at``). A backlog at the ledger would count against the miner, so a miner inlines only
with at least ``INLINE_MARGIN_S`` (60 s) left before the deadline and uploads otherwise (``sends_inline``, in
``heurist.jobs`` with the limit: the miner side never imports the ledger).
"""

from __future__ import annotations

import hashlib
from concurrent.futures import Future, ThreadPoolExecutor

from heurist.jobs import SignedCompletion
from heurist.storage.backend import ObjectInfo, ObjectStore
from heurist.storage.freeze import freeze_bytes, frozen_key

# The PUTs running beside their credits, for every ledger of the process: as many as a ledger's delivery threads
# (HEURIST_LEDGER_CONCURRENCY, 128 by default), each of which did its own PUT before. Threads start when needed.
_WRITERS = ThreadPoolExecutor(max_workers=128, thread_name_prefix="heurist-inline-put")
PUT_WAIT_IN_CREDIT_S = 0.1  # how long a credit's open transaction waits for its PUT before it lets go


class PutPending(Exception):
    """An inline output's PUT outlasted ``PUT_WAIT_IN_CREDIT_S``: the credit was rolled back, and is made again once
    the PUT is done (``Ledger._accept``, in the delivery's own thread, outside any transaction)."""


def inline_info(key: str, signed: SignedCompletion) -> ObjectInfo | None:
    """What the ledger knows of an inline output from the bytes alone (None: the output was uploaded): the
    size and sha256 it computed, as a HEAD would report them, for the checks that compare them with the claim."""
    if signed.output is None:
        return None
    return ObjectInfo(key=key, size=len(signed.output), content_type=signed.completion.content_type,
                      sha256=hashlib.sha256(signed.output).hexdigest())


def store_inline(store: ObjectStore, output_key: str, data: bytes, content_type: str) -> tuple[str, Future[str]]:
    """Start writing checked inline bytes to their frozen key: the key at once, and the PUT's future (which
    the credit awaits before it commits)."""
    key = frozen_key(output_key, hashlib.sha256(data).hexdigest())
    return key, _WRITERS.submit(freeze_bytes, store, output_key, data, content_type)


__all__ = ["PUT_WAIT_IN_CREDIT_S", "PutPending", "inline_info", "store_inline"]
