"""Completions verified in batches: the database reads and the credit writes of many deliveries go together.

Why (measured with `heurist bench ledger` on RabbitMQ, PostgreSQL and SeaweedFS, 2 shared cores): one ledger
process verified 32 completions/s with its 2 threads, two processes 43/s, while a bare Celery no-op task ran
2,350/s. With 64 threads and no batching it reached 62/s, spending 14.7 ms of CPU per completion: some 17
database statements (the signer, its standing in 5, the job, its completion, 5 in the credit, the pool's ping,
3 for the outbox's fast path) with threads queuing on 15 pooled connections, 3 boto3 calls at about 1 ms of CPU
each, and 0.3 ms recovering the signature.

How: each Celery thread still runs one message (acks late, retries of outages, dead letters and the sender
check stay per message, in ``tasks.ledger`` and ``heurist.transient``) and still runs the same ordered checks
(``heurist.ledger.verify``) and verdict code (``heurist.ledger.service``). Three steps go through a
``heurist.batching.MicroBatcher`` each instead of running alone:

- the reads (``_load``: signer, standing, job, existing completion): one session for a batch, the signers with
  their standings in one statement however many (``standing.read_signers``), the jobs with whether each has a
  completion in another (``verify.load_rows``);
- the credit (``Ledger._accept``): the batch's completion rows, points entries, job updates (one executemany) and
  middleware rows in ONE transaction, which commits only once the inline outputs' PUTs it ran beside are done
  (``heurist.ledger.inline``). Exactly once still rests on the unique keys: if that transaction fails for
  any reason (a completion another ledger process stored meanwhile, a job ended meanwhile, an item the
  middleware refuses, the database going away), it is rolled back and each item is credited alone, exactly as
  without batching, so one bad item fails only itself and an outage reaches each item as its own exception
  (retried). A second delivery of a job in the same batch is credited alone after it (a duplicate). A batch
  of reads that fails is read again item by item the same way;
- the outbox's fast path after a credit (``OutboxRelay.send_many``: one lease and one mark for the batch).

The signature, the S3 round trips (each thread does its own, so many run at once) and the hooks after a verdict run
in each delivery's own thread, so the batch threads only do database work; an inline output's PUT, which runs beside
the credit, is waited for at most 0.1 s in the transaction (``heurist.ledger.inline``). A batch takes what waited
while the previous one ran; when the ledger is busy (the last batch had more than one) it waits up to
``HEURIST_LEDGER_BATCH_WINDOW_MS`` (50) for more, and an idle ledger's lone completion never waits.

Now (with ``heurist.storage.backends.s3_fast``): 5.7 ms of CPU per completion, batches of about 10, and one
process verifies 120-155 completions/s with 128 threads (the default), 4x to 5x before; the rest is S3 requests,
Celery's per-message work, the signature and the batches' statements, spread thin (no part above a fifth).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import bindparam, update

from heurist.batching import MicroBatcher
from heurist.db.engine import is_disconnect, session_scope
from heurist.jobs import JobState
from heurist.ledger.inline import PutPending
from heurist.ledger.middleware import Accepted
from heurist.ledger.tables import Job
from heurist.ledger.verify import Attempt, load_rows, wait_all_stored

if TYPE_CHECKING:
    from heurist.ledger.service import CompletionVerdict, Ledger

log = logging.getLogger(__name__)

Credit = tuple[Attempt, Accepted]
T = TypeVar("T")


class CompletionBatches:
    """The ledger's two batched steps: ``load`` (verification's reads) and ``credit`` (the write)."""

    def __init__(self, ledger: Ledger, max_size: int, window_s: float) -> None:
        self.ledger, self.window_s = ledger, window_s
        self.loads: MicroBatcher[Attempt, None] = MicroBatcher(
            self._load, max_size=max_size, window_s=0.0, name="ledger-reads")
        self.credits: MicroBatcher[Credit, CompletionVerdict] = MicroBatcher(
            self._credit, max_size=max_size, window_s=0.0, name="ledger-credits")
        self.sends: MicroBatcher[str, None] = MicroBatcher(
            self._send, max_size=max_size, window_s=0.0, name="ledger-outbox")

    def load(self, attempt: Attempt) -> None:
        self.loads.submit(attempt)

    def credit(self, attempt: Attempt, accepted: Accepted) -> CompletionVerdict:
        return self.credits.submit((attempt, accepted))

    def publish(self, outbox_key: str) -> None:
        """The outbox's fast path after a credit (``Ledger._publish_now``), for many credits' rows at once."""
        self.sends.submit(outbox_key)

    def close(self) -> None:
        for batcher in (self.loads, self.credits, self.sends):
            batcher.close()

    def _adapt(self, batcher: MicroBatcher[Any, Any], size: int) -> None:
        """Idle (a batch of one), the next batch starts at once; busy, it waits up to the window to fill up."""
        batcher.window_s = self.window_s if size > 1 else 0.0

    def _load(self, attempts: list[Attempt]) -> list[BaseException | None]:
        self._adapt(self.loads, len(attempts))
        verifier = self.ledger._verifier()
        try:
            load_rows(verifier, attempts)
            return [None] * len(attempts)
        except Exception as err:  # each alone, so that what fails is only its own (an outage: every one's)
            if is_disconnect(err):  # at once: alone, each would wait out the outage in turn (32 x 30 s pool waits)
                return [err] * len(attempts)
            return [_raised(partial(load_rows, verifier, [a])) for a in attempts]

    def _send(self, keys: list[str]) -> list[None]:
        self._adapt(self.sends, len(keys))
        assert self.ledger.outbox is not None
        self.ledger.outbox.send_many(keys)
        return [None] * len(keys)

    def _credit(self, items: list[Credit]) -> list[CompletionVerdict | BaseException]:
        self._adapt(self.credits, len(items))
        first: dict[str, int] = {}
        for i, (a, _) in enumerate(items):
            first.setdefault(a.job_id, i)
        order = sorted(first.values(), key=lambda i: items[i][0].job_id)  # one lock order for every process
        written = self._credit_together([items[i] for i in order])
        results: dict[int, CompletionVerdict | BaseException] = {}
        if isinstance(written, BaseException):  # an outage: every item retries it (LedgerTask), none waits alone
            return [written] * len(items)
        if written is not None:
            results = dict(zip(order, written, strict=True))
        for i, item in enumerate(items):  # what was not written together: each alone, as without batching
            if i not in results:  # (a PUT still running: its delivery's thread waits for it, then comes back)
                results[i] = PutPending(item[0].job_id) if item[0].put_pending else self._alone(item)
        return [results[i] for i in range(len(items))]

    def _alone(self, item: Credit) -> CompletionVerdict | BaseException:
        return _raised(partial(self.ledger._accept_alone, *item))

    def _credit_together(self, items: Sequence[Credit]) -> list[CompletionVerdict] | BaseException | None:
        """One transaction for all of ``items`` (distinct jobs, by job id: two ledger processes lock rows in one
        order, never a deadlock); None, rolled back, if it failed; the error if the database is unreachable."""
        ledger = self.ledger
        trials = [replace(accepted, outbox_keys=[]) for _, accepted in items]  # the middleware writes on these
        try:
            plans = [ledger._credit_plan(a, accepted) for a, accepted in items]
            with session_scope(ledger._sessions) as session:
                session.add_all([ledger._completion_row(a) for a, _ in items])
                session.flush()  # first statement: a completion already stored fails the whole batch here
                ledger._unheld(session, [a for a, _ in items])  # a new miner released meanwhile: available
                session.add_all([entry for (a, _), plan in zip(items, plans, strict=True)
                                 if (entry := ledger._points_entry(a, plan)) is not None])
                ended = session.connection().execute(_END_JOB, [
                    {"b_id": a.job_id, **ledger._job_end(a, plan)} for (a, _), plan in zip(items, plans, strict=True)])
                if ended.rowcount != len(items):
                    raise _Closed(f"{len(items) - ended.rowcount} of {len(items)} jobs ended meanwhile")
                for trial in trials:
                    for mw in ledger.middleware:
                        mw.within_accept(session, trial)
                wait_all_stored([a for a, _ in items])  # inline outputs' PUTs, run beside: stored first
        except Exception as err:  # each item is credited alone next, and raises what is its own
            if is_disconnect(err):
                return err
            log.info("a batch of %d credits was rolled back (%s: %s); crediting each alone", len(items),
                     type(err).__name__, str(err).splitlines()[0] if str(err) else "")
            return None
        for (_, accepted), trial in zip(items, trials, strict=True):
            accepted.outbox_keys[:] = trial.outbox_keys
            accepted.standing = trial.standing
        return [ledger._credited(a, plan) for (a, _), plan in zip(items, plans, strict=True)]


def _raised(call: Callable[[], T]) -> T | BaseException:
    """What ``call`` returns, or the exception it raised: an item's result, raised in its own thread."""
    try:
        return call()
    except Exception as err:
        return err


class _Closed(Exception):
    """A job of the batch left QUEUED since it was read."""


_JOBS = Job.__table__.c
# One statement for every job of a batch (executemany): only a job still QUEUED takes its completion.
_END_JOB = (update(Job).where(_JOBS.id == bindparam("b_id"), _JOBS.state == JobState.QUEUED)
            .values(state=bindparam("b_state", type_=_JOBS.state.type), miner_address=bindparam("b_miner"),
                    finished_at=bindparam("b_finished"), error=bindparam("b_error")))


__all__ = ["CompletionBatches"]
