"""Pushed verdicts: the ledger tells a waiting client on the broker when one of its jobs ends.

A client used to learn a verdict by reading the ledger's database every ``result_poll_interval_s`` (0.1 s):
half a poll of latency per job on average, and one query every 0.1 s per waiting request, however long its
jobs run. Now, on RabbitMQ:

- the client picks a random, secret **notify key** (``Client.verdicts.key``), binds one exclusive, auto-deleted
  queue to the direct exchange ``heurist.verdicts`` with a hash of it (``notice.routing_key``), and records the
  key on each job row it submits (``jobs.notify_key``, migration 0017);
- the ledger, after a verdict commits (credited, late; failed by the trusted side, the stranded-job sweep
  included), publishes a ``VerdictNotice`` routed to that job's client: the job as committed (the view a read
  of its row returns), sealed with an HMAC under the notify key (``heurist.verdicts.publisher``). The broker
  drops a notice nobody is bound for;
- ``Client.wait_all`` sleeps until a notice for one of its jobs arrives and takes its view as it is; a notice
  whose seal does not hold under its key (a forgery, even by someone who knows the routing key) or that has
  no view only wakes it to read the row, which is the truth. A slow read of every unfinished job
  (``verdict_fallback_poll_s``, 5 s) finds verdicts whose notice was lost; while the listener is disconnected,
  and for jobs submitted by another client, the wait polls as before.

Measured on RabbitMQ + PostgreSQL (2 shared cores), one null job at a time (`heurist bench latency`, 200 jobs):
submit to verdict p50 fell from 114-120 ms polled to 45-58 ms pushed, next to 8-10 ms for a bare Celery task
doing the same PUT. Of 44 ms: the submit 9 (a durable INSERT and a confirmed publish), the miner 8, the ledger's
verification and credit 22, its notice to the client's read of the row 6. A wait of T seconds reads the
database about 2 + T/5 times instead of 10 T times.

Then (2026-12-02, the same bench, alternating with the commit before): the notice brings the job's view, sealed, so
the client's read after it (a ping, BEGIN, SELECT, ROLLBACK) is gone, and reads run without a transaction
(``heurist.db.engine.read_factory``): p50 23.4 to 26.7 ms against 28.1 to 29.6 ms, next to 8.1 to 9.2 ms bare.

Who may use the exchange: only the trusted side. Miners have no configure right, write only their inbox and
``heurist.stream``, and read only tier queues (``heurist.access.permissions``), so a miner's user can neither
publish a notice, nor bind a queue to the exchange, nor consume a client's queue (it is exclusive too):
tests/adversary/test_forged_verdicts.py tries all three.

Why not the outbox (``heurist.outbox``): it makes a message survive a ledger crash at the price of a row write,
a lease and a confirmed publish per message; a notice that is lost costs one fallback poll, so it is published
best-effort, unconfirmed, off the verdict's thread, and a failure to publish never fails a verdict.

Why not on the embedded SQLite broker: kombu's virtual transports keep exchange bindings inside each process, so
the ledger's process cannot route to a queue the client bound; and that transport polls its table every 0.1 s
anyway, as often as the client polls the ledger. The embedded network keeps polling.
"""

from heurist.verdicts.notice import EXCHANGE, EXCHANGE_NAME, VerdictNotice, new_notify_key, notifies

__all__ = ["EXCHANGE", "EXCHANGE_NAME", "VerdictNotice", "new_notify_key", "notifies"]
