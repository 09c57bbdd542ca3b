"""A message the ledger received is never dropped: transient errors are retried without limit, the rest kept.

Every ledger task runs on ``LedgerTask`` (``tasks.ledger``), so this is the one place that decides what an
exception means, not an ``if`` in each task. Before (issue 14): ``autoretry_for`` the database and storage
errors with ``max_retries=20`` and Celery's full-jitter back-off capped at 30 s gave up 2.8 to 4.6 minutes into a
PostgreSQL outage, and Celery then acked the message (``task_acks_on_failure``): 9 of 10 verified completions
were lost in a 330 s outage. Any other exception was acked and dropped at once, leaving only a traceback.

Each delivery now ends in one of three ways:

- it returns;
- it raises a transient error (``transient_source``: the database unreachable, ``heurist.db.engine
  .is_disconnect``, or object storage, ``StorageError``): the message is published again to the trusted
  ``ledger`` queue with a countdown (``InboxTask.retry`` keeps the sender validated on first receipt) and the
  original is acked, with no limit on the number of retries. The countdown doubles from 0.5 s up to
  ``Settings.ledger_retry_max_s`` (30 s) with equal jitter (half to all of it, so a backlog does not retry in
  lockstep): 20 retries of one message in a 330 s outage (measured), which goes through at most 30 s after it ends;
- it raises anything else (a bug, a value the database refuses): the task's arguments (a replayable body) are
  kept in ``dead-letters`` with reason ``unprocessable`` and the exception's type and first line, then the
  message is acked and the worker takes the next one: no crash loop. If that publish fails, the message is
  rejected without requeue, so the broker's dead-letter policy on ``ledger`` and the inboxes keeps it instead.

Why republish, not requeue or hold: ``basic.reject(requeue=True)`` redelivers at once (a hot loop on a down
database) and, on a quorum queue, counts against its ``delivery-limit``, past which RabbitMQ drops or
dead-letters the message: the very limit removed here. Holding the message unacked while the task sleeps ties
a worker thread to each message and, past RabbitMQ's ``consumer_timeout`` (30 min), gets the channel closed
(celery/celery#6760). A retry is a new message (its delivery count starts again) with an ETA; the worker holds
it unacked for at most the countdown, far below the consumer timeout, and Celery raises the prefetch limit for
ETA messages so they do not block fresh ones. The republish is confirmed by the broker before the original is
acked (publisher confirms). If it fails (the broker is in trouble too), the original is rejected with requeue
after one back-off pause: it comes back rather than going. Order: a retried message goes behind newer ones,
which no verdict depends on (exactly once rests on unique keys, lateness on the store's upload time or, for an
inline output, on the first receipt, which the retry carries: ``heurist.access.senders.received_at``).

Alert: ``Outages`` follows, per source, the messages waiting for a retry. From the first one it logs a WARNING;
past ``Settings.ledger_outage_alert_s`` of waiting, one ERROR line with how many wait and the most retries of
one; when none waits any more, a WARNING that it is over (WARNING rather than INFO: the ledger runs at WARNING,
and an operator who saw the ERROR must see the end). ``heurist.monitoring.ledger_metrics`` serves the numbers.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from celery import Celery
from celery.exceptions import Ignore, Reject, Retry
from celery.signals import task_revoked

from heurist.access.senders import InboxTask
from heurist.db.engine import is_disconnect
from heurist.deadletters import DETAIL_CHARS, Reason, keep_request
from heurist.errors import StorageError
from heurist.settings import Settings

log = logging.getLogger(__name__)

SOURCES = ("database", "storage")
FIRST_RETRY_S = 0.5
STALE_AFTER = 3  # a waiting message not seen for 3 longest back-offs went through another ledger process


def transient_source(err: BaseException) -> str | None:
    """What ``err`` says is away for now (``database`` or ``storage``), or None when a retry would not help."""
    if is_disconnect(err):
        return "database"
    if isinstance(err, StorageError):
        return "storage"
    return None


@dataclass(frozen=True)
class Backoff:
    """Doubling countdowns from ``first_s`` up to ``max_s``, each between half and all of its ceiling."""

    max_s: float = 30.0
    first_s: float = FIRST_RETRY_S

    def countdown(self, retries: int, draw: Callable[[], float] = random.random) -> float:
        ceiling = min(self.max_s, self.first_s * 2.0 ** min(retries, 30))
        return ceiling * (0.5 + 0.5 * draw())


@dataclass
class Outage:
    """Messages failing on one source now: task id -> (retries so far, when last seen)."""

    source: str
    started: float
    waiting: dict[str, tuple[int, float]] = field(default_factory=dict)
    alerted: bool = False
    last_error: str = ""


@dataclass(frozen=True)
class OutageView:
    source: str
    waiting: int
    most_retries: int
    seconds: float
    alerting: bool


class Outages:
    """What the ledger process knows of its transient failures: thread-safe, read by the metrics endpoint."""

    def __init__(self, alert_after_s: float, stale_after_s: float, clock: Callable[[], float] = time.monotonic):
        self.alert_after_s, self.stale_after_s, self.clock = alert_after_s, stale_after_s, clock
        self.retries: Counter[tuple[str, str]] = Counter()  # (source, task) -> retries since start
        self.dead_lettered: Counter[str] = Counter()  # task -> messages kept in dead-letters
        self._open: dict[str, Outage] = {}
        self._lock = threading.Lock()

    def failed(self, source: str, task_id: str, task: str, retries: int, err: BaseException) -> None:
        """Message ``task_id`` failed on ``source`` and is retried for the ``retries``-th time."""
        now = self.clock()
        with self._lock:
            self.retries[(source, task)] += 1
            for other in self._open.values():
                other.waiting.pop(task_id, None)
            outage = self._open.get(source)
            if outage is None:
                outage = self._open[source] = Outage(source, now)
                log.warning("ledger: the %s is unreachable (%s); its messages are retried without limit, "
                            "nothing is dropped", source, _first_line(err))
            outage.waiting[task_id] = (retries, now)
            outage.last_error = _first_line(err)
            self._expire(now)
            if not outage.alerted and now - outage.started >= self.alert_after_s:
                outage.alerted = True
                log.error("ledger: the %s has been unreachable for %.0fs: %d message(s) waiting, one retried %d "
                          "times (%s). Nothing is dropped: they go through once it is back (alert after "
                          "HEURIST_LEDGER_OUTAGE_ALERT_S=%g)", source, now - outage.started, len(outage.waiting),
                          _most(outage), outage.last_error, self.alert_after_s)

    def settled(self, task_id: str) -> None:
        """Message ``task_id`` went through (or was kept in dead-letters): it waits no more."""
        with self._lock:
            for outage in self._open.values():
                outage.waiting.pop(task_id, None)
            self._expire(self.clock())

    def kept(self, task: str) -> None:
        with self._lock:
            self.dead_lettered[task] += 1

    def views(self) -> list[OutageView]:
        """Each source, failing or not, as the metrics show it now."""
        with self._lock:
            now = self.clock()
            self._expire(now)
            out = []
            for source in SOURCES:
                o = self._open.get(source)
                out.append(OutageView(source, 0, 0, 0.0, False) if o is None else
                           OutageView(source, len(o.waiting), _most(o), now - o.started, o.alerted))
            return out

    def _expire(self, now: float) -> None:
        """Drop messages not seen for a while (retried by another ledger process); close emptied outages."""
        for source, outage in list(self._open.items()):
            for task_id, (_, seen) in list(outage.waiting.items()):
                if now - seen > self.stale_after_s:
                    del outage.waiting[task_id]
            if not outage.waiting:
                del self._open[source]
                (log.warning if outage.alerted else log.info)(
                    "ledger: no message waits for the %s any more, after %.0fs", source, now - outage.started)


def _most(outage: Outage) -> int:
    return max((retries for retries, _ in outage.waiting.values()), default=0)


def sane_retries(claimed: Any) -> int:
    """The message's retry count as a sane integer. A miner writes the headers of what it sends to its inbox: a
    ``retries`` of -10**9 made every countdown 0 (a hot republish loop during an outage), and a string raised in
    here, so the message was acked and neither retried nor kept. Clamped to 0..10,000 (30 s back-offs long
    before)."""
    try:
        return min(max(int(claimed or 0), 0), 10_000)
    except (TypeError, ValueError, OverflowError):
        return 0


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:DETAIL_CHARS]


@dataclass(frozen=True)
class TransientPolicy:
    """How a ledger app retries and alerts (``install_transient`` puts it on the app)."""

    backoff: Backoff
    outages: Outages

    @classmethod
    def from_settings(cls, settings: Settings) -> TransientPolicy:
        stale = STALE_AFTER * settings.ledger_retry_max_s + 10
        return cls(Backoff(settings.ledger_retry_max_s), Outages(settings.ledger_outage_alert_s, stale))

    def handle(self, task: Any, err: Exception, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Retry a transient error (raises Retry or Reject); keep anything else in dead-letters and return."""
        source = transient_source(err)
        if source is not None:
            raise self._retry(task, err, source)
        self.outages.settled(task.request.id)
        self.outages.kept(task.name)
        detail = _first_line(err)
        log.error("%s[%s] cannot be processed (%s): kept in dead-letters", task.name, task.request.id, detail,
                  exc_info=err)
        body = json.dumps([list(args), kwargs, {}], default=str).encode()
        if not keep_request(task, Reason.UNPROCESSABLE, detail, body):
            raise Reject(f"unprocessable and not kept: {detail}", requeue=False) from err  # the broker's DLX keeps it

    def _retry(self, task: Any, err: Exception, source: str) -> Exception:
        retries = sane_retries(task.request.retries)
        task.request.retries = retries  # what Celery's retry counts from, in the republished message too
        countdown = self.backoff.countdown(retries)
        self.outages.failed(source, task.request.id, task.name, retries + 1, err)
        try:
            retry: Exception = task.retry(exc=err, countdown=countdown, throw=False)
            return retry
        except Reject as rejected:  # Celery could not publish the retry: take the original back instead
            log.warning("%s[%s]: the retry could not be published (%s); requeued in %.1fs", task.name,
                        task.request.id, rejected.reason, countdown)
            time.sleep(countdown)
            return Reject(f"retry not published: {rejected.reason}", requeue=True)


def install_transient(app: Celery, settings: Settings) -> TransientPolicy:
    """Give ``app``'s ledger tasks their retry policy and outage tracking (before the worker starts).

    A message may carry an expiry its retries keep (a miner's heartbeat: 60 s); one that expires while it waits
    is revoked by the worker without running, so it is settled here, or it would count as waiting until
    forgotten as stale (measured: the gauge stayed at 1 for 100 s after a 330 s outage ended)."""
    policy = TransientPolicy.from_settings(settings)
    app.conf.heurist_transient = policy

    def expired(sender: Any = None, request: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is app and request is not None:
            policy.outages.settled(str(request.id))

    task_revoked.connect(expired, weak=False)
    return policy


def transient_policy(app: Celery) -> TransientPolicy:
    """The policy ``install_transient`` set, or one with the settings' defaults."""
    policy = app.conf.get("heurist_transient")
    if not isinstance(policy, TransientPolicy):
        policy = install_transient(app, Settings(_env_file=None))  # type: ignore[call-arg]
    return policy


class LedgerTask(InboxTask):  # type: ignore[misc]
    """A ledger task: retried without limit on transient errors, kept in dead-letters on any other."""

    max_retries = None  # no limit (the module docstring says why)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.request.called_directly:  # a plain call, not a message: nothing to retry or keep
            return super().__call__(*args, **kwargs)
        policy = transient_policy(self.app)
        try:  # self.run, not super().__call__, which would push a request without the message's delivery info
            result = self.run(*args, **kwargs)
        except (Retry, Reject, Ignore):  # raised on purpose: Celery acts on them
            raise
        except Exception as err:
            policy.handle(self, err, args, kwargs)
            return None
        policy.outages.settled(self.request.id)
        return result


__all__ = ["Backoff", "LedgerTask", "OutageView", "Outages", "TransientPolicy", "install_transient", "sane_retries",
           "transient_policy", "transient_source"]
