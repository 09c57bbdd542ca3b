"""Streamed tokens of a text job, from the miner to the application over the broker.

Miners hold only broker credentials, so tokens travel as ``TokenChunk`` messages: on AMQP through the
direct exchange ``heurist.stream`` (routing key: the job id), which a miner may write but not read; a chunk
nobody listens for is dropped by RabbitMQ. kombu's virtual transports (the embedded SQLite broker) keep
exchange bindings inside each process, so a miner there cannot route through an exchange the application
bound: chunks go straight to the queue ``heurist.stream.<job id>`` by name instead.

Chunks are previews. The answer an application may trust is the stored ``TextOutput`` the ledger verified;
the stream only shows it sooner. Since every miner may write to ``heurist.stream``, a ``TokenStream`` shows
only chunks MACed with its job's stream key and, on AMQP, sent by one broker-validated user; then
``TokenStream.verify`` checks what it showed against the verified answer (``heurist.stream_auth`` says why,
and what a miner serving the same tier can still do).
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections import Counter, deque
from collections.abc import Iterator
from types import TracebackType

from kombu import Connection, Consumer, Exchange, Message, Queue
from kombu.transport import virtual

from heurist import broker
from heurist.errors import JobTimeoutError
from heurist.jobs import TokenChunk
from heurist.stream_auth import MAX_CHUNK_BYTES, check_stream, mac_ok, new_stream_key

log = logging.getLogger(__name__)

STREAM_EXCHANGE = "heurist.stream"
# Durable, so a broker restart does not make miners' publishes fail until an application declares it again.
EXCHANGE = Exchange(STREAM_EXCHANGE, "direct", durable=True, delivery_mode="transient")


def stream_queue_name(job_id: str) -> str:
    return f"{STREAM_EXCHANGE}.{job_id}"


def routes_by_exchange(connection: Connection) -> bool:
    """Whether the broker routes through exchanges across processes (not kombu's virtual transports)."""
    return not isinstance(connection.transport, virtual.Transport)


def stream_route(connection: Connection, job_id: str) -> tuple[str, str]:
    """The (exchange, routing key) a miner publishes ``job_id``'s chunks to on ``connection``'s broker."""
    if routes_by_exchange(connection):
        return STREAM_EXCHANGE, job_id
    return "", stream_queue_name(job_id)


def publisher_user(connection: Connection) -> str | None:
    """The ``user_id`` a miner sets on its chunks: its broker user on AMQP (RabbitMQ refuses any other),
    None on the embedded broker, which has no users."""
    return str(connection.info()["userid"]) if routes_by_exchange(connection) else None


class TokenStream:
    """Receive one job's chunks. Enter it BEFORE sending the job (with ``stream_key=stream.key``): chunks
    published earlier are lost.

    Only authentic chunks are yielded: at most ``MAX_CHUNK_BYTES``, JSON, this job's, MACed with ``key``, on
    AMQP carrying a ``user_id`` and from the first user that sent a valid chunk (``user``), in index order.
    Every other message is dropped and counted in ``dropped`` (by reason) and ``dropped_users``, and logged
    once per reason and user. ``text`` is what was yielded; after the ``done`` chunk, ``verify`` compares it
    with the verified answer. The chunk timeout counts from the last authentic chunk, so junk cannot keep a
    stream waiting.

    On AMQP the queue is exclusive and auto-deleted, so it goes when this stream closes (or its process
    dies). On the embedded broker, queues outlive consumers, so closing purges it.
    """

    def __init__(self, broker_url: str, job_id: str, chunk_timeout_s: float = 60.0,
                 polling_interval_s: float = 0.02, key: str | None = None) -> None:
        broker.register()
        self.job_id = job_id
        self.key = key or new_stream_key()
        if not re.fullmatch(r"[0-9a-f]{64}", self.key):
            raise ValueError("key: a stream key is 64 lowercase hex characters (heurist.stream_auth.new_stream_key)")
        self.chunk_timeout_s = chunk_timeout_s
        self._conn = Connection(broker_url, transport_options={"polling_interval": polling_interval_s})
        self._users = routes_by_exchange(self._conn)  # AMQP: RabbitMQ validates user_id; embedded: no users
        self._consumer: Consumer | None = None
        self._inbox: deque[Message] = deque()
        self.user: str | None = None
        self.text = ""
        self.dropped: Counter[str] = Counter()
        self.dropped_users: Counter[str] = Counter()
        self._next_index = 0

    def __enter__(self) -> TokenStream:
        name = stream_queue_name(self.job_id)
        declared = Queue(name, EXCHANGE, routing_key=self.job_id, exclusive=True, auto_delete=True,
                         durable=False)
        # Declares and binds now. Messages are kept raw (``on_message``) and decoded one by one in ``_admit``,
        # JSON only: kombu would otherwise decode while receiving, and one pickled message would end the stream.
        self._consumer = Consumer(self._conn.channel(), queues=[declared], no_ack=True, accept=["json"],
                                  on_message=self._inbox.append)
        self._consumer.consume()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.dropped:
            log.warning("job %s: stream dropped %d message(s) %s from %s", self.job_id, sum(self.dropped.values()),
                        dict(self.dropped), dict(self.dropped_users) or "no broker user")
        try:
            if self._consumer is not None and not routes_by_exchange(self._conn):
                self._conn.default_channel.queue_purge(stream_queue_name(self.job_id))
            if self._consumer is not None:
                self._consumer.cancel()
        finally:
            self._conn.release()

    def __iter__(self) -> Iterator[TokenChunk]:
        """Authentic chunks in order, the ``done`` one last; ``JobTimeoutError`` if none comes in the timeout."""
        if self._consumer is None:
            raise RuntimeError("enter the TokenStream (before sending the job) to receive its chunks")
        give_up = time.monotonic() + self.chunk_timeout_s
        while True:
            while not self._inbox:
                left = give_up - time.monotonic()
                if left <= 0:
                    raise JobTimeoutError(f"job {self.job_id}: no streamed token for {self.chunk_timeout_s:g}s "
                                          "(the miner may not stream, or the job failed)")
                with contextlib.suppress(TimeoutError):  # socket.timeout is TimeoutError
                    self._conn.drain_events(timeout=left)
            chunk = self._admit(self._inbox.popleft())
            if chunk is None:
                continue
            give_up = time.monotonic() + self.chunk_timeout_s
            self.text += chunk.text
            self._next_index += 1
            yield chunk
            if chunk.done:
                return

    def verify(self, verified_text: str, completing_user: str | None = None) -> str:
        """After the stream: what of ``verified_text`` is still to show (normally ""); StreamMismatchError if
        the shown text is not a prefix of it, or the stream's user is not ``completing_user`` (when known)."""
        return check_stream(self.job_id, self.text, verified_text, self.user, completing_user)

    def _admit(self, message: Message) -> TokenChunk | None:
        """The message's chunk if it is authentic, else None (dropped, counted, logged)."""
        user = message.properties.get("user_id") if self._users else None
        verdict = self._judge(message, user)
        if isinstance(verdict, str):
            self._drop(verdict, user)
            return None
        self.user = user  # the first valid chunk locks the stream to its sender (None on the embedded broker)
        return verdict

    def _judge(self, message: Message, user: str | None) -> TokenChunk | str:
        """The chunk, or why it is dropped: the checks in order, cheapest first."""
        if len(message.body) > MAX_CHUNK_BYTES:
            return "oversized"
        try:
            chunk = TokenChunk.model_validate(message.payload)
        except Exception:  # undecodable, a refused content type, or not a TokenChunk
            return "malformed"
        if chunk.job_id != self.job_id:
            return "other job"
        if not mac_ok(self.key, chunk):
            return "bad MAC"
        if self._users and not user:
            return "no user_id"
        if self.user is not None and user != self.user:
            return "valid MAC from another broker user"
        if chunk.index != self._next_index:
            return "out of order"
        return chunk

    def _drop(self, reason: str, user: str | None) -> None:
        self.dropped[reason] += 1
        self.dropped_users[user or "(none)"] += 1
        if self.dropped[reason] == 1 or self.dropped_users[user or "(none)"] == 1:
            level = logging.WARNING if reason.startswith("valid MAC") else logging.INFO
            log.log(level, "job %s: dropped a streamed chunk (%s) from broker user %s%s", self.job_id, reason,
                    user or "(none)", f"; the stream is locked to {self.user}" if self.user else "")
