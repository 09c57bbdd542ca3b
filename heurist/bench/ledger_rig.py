"""A ledger with its queues pre-filled: valid signed completions with their outputs, sent as miners send.

``heurist bench ledger`` and the duplicate-delivery tests build on this. Jobs are recorded by the trusted side's
``JobBook`` as a client records them; each output (the null model's ``TextOutput``, so every ledger check runs,
token counts included) is PUT to the store, or carried inline in its completion as miners send small outputs
(``heurist.ledger.inline``); each completion is signed with a registered miner key.

How completions reach the ledger: on RabbitMQ through real miner broker users (``heurist broker add-miner``),
each publishing into its own inbox (``to-ledger.<user>``) with its ``user_id``, the way a miner's worker does
(``heurist.access.miner_app.confine_miner``). So ``sender_of`` validates them exactly as real completions, and
the ledger's sender check compares that user with the one the key registered under. Keys are registered through
the registration code (``Ledger.register_miner`` with the broker user as sender, what the hello task does), so no
hello races the first completions. An inbox holds ``inbox_max_messages`` messages at most (1000; reject-publish),
so the completions are spread over one miner per ``PER_INBOX``. ``publish(..., trusted=True)`` sends to the
``ledger`` queue instead, as the ledger's own retries and trusted publishers do. Embedded brokers have no users:
there every miner sends to the ``ledger`` queue, as embedded miners do.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

from celery import Celery
from sqlalchemy import func, select

from heurist.access.backend import inbox_name, miner_user
from heurist.access.miner_app import confine_miner
from heurist.bench.path import BENCH_MODEL
from heurist.catalog import load_catalog
from heurist.catalog.attestation import weights_digest
from heurist.celery_app import create_app
from heurist.db.engine import session_scope
from heurist.deadletters import DEAD_QUEUE
from heurist.embedded import EmbeddedNetwork, heurist_cmd
from heurist.identity import Wallet
from heurist.jobs import (
    Completion,
    DeviceInfo,
    JobState,
    MinerHello,
    SignedCompletion,
    SignedHello,
    TextOutput,
    TextParams,
    Timings,
)
from heurist.ledger.factory import open_ledger
from heurist.ledger.tables import CompletionRow, Job, PointsEntry, Reason, Rejection
from heurist.processes import stop_all
from heurist.settings import is_amqp
from heurist.signing import Domain, sign_message
from heurist.storage import make_store
from tasks.names import RECORD_COMPLETION

PER_INBOX = 400  # completions per miner inbox: inside its 1000 messages and 4 MB (one is 1.3 KB, 4 KB inline)
DEVICE = DeviceInfo(kind="cpu", name="bench-cpu", vram_gb=0.0)
ANSWER = TextOutput(text="x" * 1800, input_tokens=1, output_tokens=1, output_token_ids=[0],
                    finish_reason="length").model_dump_json().encode()  # 2 KB, like `bench path`'s null answers


class LedgerNetwork(EmbeddedNetwork):
    """The embedded network (broker set up, SeaweedFS unless HEURIST_S3_ENDPOINT) without its ledger: the rig
    starts and stops ledger processes itself."""

    def start_ledger(self) -> None:
        return None


@dataclass
class _Miner:
    wallet: Wallet
    app: Celery


class LedgerRig:
    """Jobs, outputs and signed completions on ``net``'s services, published into the miners' inboxes."""

    def __init__(self, net: EmbeddedNetwork, miners: int) -> None:
        self.net, self.settings = net, net.settings()
        self.catalog = load_catalog(self.settings.catalog_path)
        self.spec = self.catalog[BENCH_MODEL]
        self.store = make_store(self.settings)
        self.store.ensure_bucket()
        self.ledger = open_ledger(self.settings, self.catalog, self.store)  # migrates the database
        self.domain = Domain.of(self.settings)
        self.amqp = is_amqp(self.settings.resolved_broker_url())
        self.trusted = create_app(self.settings)
        self.miners = [self._miner(i) for i in range(miners)]
        self.ledgers: list[str] = []

    @classmethod
    def miners_for(cls, completions: int) -> int:
        return max(1, math.ceil(completions / PER_INBOX))

    def _miner(self, i: int) -> _Miner:
        wallet = Wallet.create()
        own = self.net.own_broker_url(wallet.address)  # a broker user and its inbox (None: embedded broker)
        hello = MinerHello(miner=wallet.address, models=[self.spec.id], queues=[self.spec.queue], device=DEVICE,
                           started_at=time.time())
        signed = SignedHello(hello=hello, signature=sign_message(wallet, hello, self.domain))
        verdict = self.ledger.register_miner(signed, miner_user(wallet.address) if own else None)
        assert verdict.accepted, f"bench miner {i} not registered: {verdict.reason}"
        url = own or self.settings.resolved_broker_url()
        app = create_app(self.settings.model_copy(update={"broker_url": url}))
        confine_miner(app, url, self.settings.ledger_queue, [])
        return _Miner(wallet, app)

    # ------------------------------------------------------------------------------------- completions

    def completions(self, n: int, threads: int = 8, *, inline: bool = False) -> list[SignedCompletion]:
        """``n`` fresh jobs and each one's completion signed by a miner in turn, its output stored (``inline``:
        carried in the completion instead, as miners send small outputs: ``heurist.ledger.inline``)."""
        with ThreadPoolExecutor(threads) as pool:
            return list(pool.map(partial(self._one, inline=inline), range(n)))

    def _one(self, i: int, inline: bool) -> SignedCompletion:
        job_id = str(uuid.uuid4())
        key = f"outputs/{self.spec.id}/{job_id}.json"
        self.ledger.book.create_job(job_id, self.spec, TextParams(prompt="bench", max_tokens=1), key,
                                    self.spec.queue, time.time() + 3600)
        if not inline:
            self.store.put(key, ANSWER, "application/json")
        wallet = self.miners[i % len(self.miners)].wallet
        claim = Completion(job_id=job_id, model_id=self.spec.id, miner=wallet.address,
                           output_sha256=hashlib.sha256(ANSWER).hexdigest(), output_bytes=len(ANSWER),
                           content_type="application/json",
                           input_tokens=1, output_tokens=1, timings=Timings(run_s=0.0, upload_s=0.0, total_s=0.0),
                           device=DEVICE, weights_sha256=weights_digest(self.spec.files), finished_at=time.time())
        return SignedCompletion(completion=claim, signature=sign_message(wallet, claim, self.domain),
                                output=ANSWER if inline else None)

    def publish(self, signed: Sequence[SignedCompletion], *, trusted: bool = False) -> None:
        """Send each completion as its miner does (confirmed by the broker); ``trusted``: to the ``ledger`` queue."""
        by_address = {m.wallet.address: m for m in self.miners}
        for one in signed:
            app = self.trusted if trusted else by_address[one.completion.miner].app
            app.send_task(RECORD_COMPLETION, args=[one.model_dump(mode="json")], queue=self.settings.ledger_queue)

    # ---------------------------------------------------------------------------------------- ledgers

    def start_ledgers(self, n: int, *extra: str) -> None:
        for _ in range(n):
            name = f"ledger{len(self.ledgers)}-{uuid.uuid4().hex[:4]}"
            self.net.spawn(name, heurist_cmd("ledger", "--loglevel", "WARNING", *extra), self.net.trusted_env())
            self.ledgers.append(name)

    def stop_ledgers(self) -> None:
        stop_all([self.net.supervisor.forget(name) for name in self.ledgers])
        self.ledgers.clear()

    def wait_verified(self, job_ids: Sequence[str], timeout_s: float) -> None:
        """Until every job has left QUEUED (or ``timeout_s``, then raise), checking the ledgers stay up."""
        give_up = time.monotonic() + timeout_s
        while (left := self.still_queued(job_ids)) > 0:
            self.net.check_alive()
            if time.monotonic() > give_up:
                raise TimeoutError(f"{left} of {len(job_ids)} completions not verified after {timeout_s:g}s "
                                   f"(ledger logs: {self.net.logs})")
            time.sleep(0.05)

    def still_queued(self, job_ids: Sequence[str]) -> int:
        return sum(self._chunked(job_ids, lambda chunk: select(func.count()).select_from(Job).where(
            Job.id.in_(chunk), Job.state == JobState.QUEUED)))

    def received_at(self, job_ids: Sequence[str]) -> list[float]:
        """When the ledger took each stored completion in hand (its clock), sorted."""
        out: list[float] = []
        with session_scope(self.ledger.engine) as session:
            for chunk in _chunks(job_ids):
                out += session.scalars(select(CompletionRow.received_at).where(CompletionRow.job_id.in_(chunk)))
        return sorted(out)

    def credits(self, job_ids: Sequence[str]) -> dict[str, int]:
        """Points entries per job (exactly once: 1 for each)."""
        counts: dict[str, int] = dict.fromkeys(job_ids, 0)
        with session_scope(self.ledger.engine) as session:
            for chunk in _chunks(job_ids):
                counts.update((str(j), int(n)) for j, n in session.execute(
                    select(PointsEntry.job_id, func.count()).where(PointsEntry.job_id.in_(chunk))
                    .group_by(PointsEntry.job_id)))
        return counts

    def duplicates(self, job_ids: Sequence[str]) -> int:
        """Deliveries refused as duplicates (each one after a job's first is recorded so)."""
        return sum(self._chunked(job_ids, lambda chunk: select(func.count()).select_from(Rejection).where(
            Rejection.job_id.in_(chunk), Rejection.reason == Reason.DUPLICATE)))

    def consuming(self, ledgers: int) -> bool:
        """Whether ``ledgers`` consumers read the ``ledger`` queue and every miner's inbox (always on an embedded
        broker)."""
        if not self.amqp:
            return True
        queues = [self.settings.ledger_queue, *(inbox_name(miner_user(m.wallet.address)) for m in self.miners)]
        with self.trusted.connection_for_write() as conn:
            return all(conn.default_channel.queue_declare(q, passive=True).consumer_count >= ledgers for q in queues)

    def purge(self, queue: str, *, delete: bool = False) -> None:
        """Empty (or delete) a queue the bench filled, if it exists (an embedded broker's go with its directory)."""
        if not self.amqp:
            return
        from amqp.exceptions import NotFound

        with self.trusted.connection_for_write() as conn, contextlib.suppress(NotFound):
            channel = conn.channel()
            channel.queue_delete(queue) if delete else channel.queue_purge(queue)

    def dead_letters(self) -> int:
        """Messages in the broker's ``dead-letters`` queue (0 on an embedded broker, which has none)."""
        if not self.amqp:
            return 0
        with self.trusted.connection_for_write() as conn:
            return int(conn.default_channel.queue_declare(DEAD_QUEUE, passive=True).message_count)

    def states(self, job_ids: Sequence[str]) -> dict[str, Any]:
        with session_scope(self.ledger.engine) as session:
            return {str(j): s for chunk in _chunks(job_ids)
                    for j, s in session.execute(select(Job.id, Job.state).where(Job.id.in_(chunk)))}

    def _chunked(self, job_ids: Sequence[str], query: Any) -> list[int]:
        with session_scope(self.ledger.engine) as session:
            return [int(session.scalar(query(chunk)) or 0) for chunk in _chunks(job_ids)]

    def close(self) -> None:
        for miner in self.miners:
            miner.app.close()
        self.trusted.close()
        self.ledger.engine.dispose()


def _chunks(ids: Sequence[str], size: int = 500) -> list[Sequence[str]]:
    return [ids[i:i + size] for i in range(0, len(ids), size)]
