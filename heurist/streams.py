"""Streamed tokens of a text job, from the miner to the application over the broker.

Miners hold only broker credentials, so tokens travel as ``TokenChunk`` messages: on AMQP through the
direct exchange ``heurist.stream`` (routing key: the job id), which a miner may write but not read; a chunk
nobody listens for is dropped by RabbitMQ. kombu's virtual transports (the embedded SQLite broker) keep
exchange bindings inside each process, so a miner there cannot route through an exchange the application
bound: chunks go straight to the queue ``heurist.stream.<job id>`` by name instead.

Chunks are unverified previews. The answer an application may trust is the stored ``TextOutput`` the
ledger verified; the stream only shows it sooner.
"""

from __future__ import annotations

import queue
from collections.abc import Iterator
from types import TracebackType

from kombu import Connection, Exchange, Queue
from kombu.simple import SimpleQueue
from kombu.transport import virtual

from heurist import broker
from heurist.errors import JobTimeoutError
from heurist.jobs import TokenChunk

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


class TokenStream:
    """Receive one job's chunks. Enter it BEFORE sending the job: chunks published earlier are lost.

    On AMQP the queue is exclusive and auto-deleted, so it goes when this stream closes (or its process
    dies). On the embedded broker, queues outlive consumers, so closing purges it.
    """

    def __init__(self, broker_url: str, job_id: str, chunk_timeout_s: float = 60.0,
                 polling_interval_s: float = 0.02) -> None:
        broker.register()
        self.job_id = job_id
        self.chunk_timeout_s = chunk_timeout_s
        self._conn = Connection(broker_url, transport_options={"polling_interval": polling_interval_s})
        self._simple: SimpleQueue | None = None

    def __enter__(self) -> TokenStream:
        name = stream_queue_name(self.job_id)
        declared = Queue(name, EXCHANGE, routing_key=self.job_id, exclusive=True, auto_delete=True,
                         durable=False)
        self._simple = self._conn.SimpleQueue(declared, no_ack=True)  # declares and binds now
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            if self._simple is not None and not routes_by_exchange(self._conn):
                self._simple.channel.queue_purge(stream_queue_name(self.job_id))
            if self._simple is not None:
                self._simple.close()
        finally:
            self._conn.release()

    def __iter__(self) -> Iterator[TokenChunk]:
        """Chunks in order, the ``done`` one last; ``JobTimeoutError`` if one takes over the timeout."""
        if self._simple is None:
            raise RuntimeError("enter the TokenStream (before sending the job) to receive its chunks")
        while True:
            try:
                message = self._simple.get(block=True, timeout=self.chunk_timeout_s)
            except queue.Empty:
                raise JobTimeoutError(f"job {self.job_id}: no streamed token for {self.chunk_timeout_s:g}s "
                                      "(the miner may not stream, or the job failed)") from None
            chunk = TokenChunk.model_validate(message.payload)
            yield chunk
            if chunk.done:
                return
