"""Publish a text job's tokens as they are made (``JobMessage.stream``), best effort.

Chunks are previews for the application (``heurist.streams``); the verified answer is still the stored object
the ledger checks. So streaming never fails a job: the first publishing error is logged and the rest of the
stream is dropped, while the job runs on. Each chunk carries an HMAC under the job's ``stream_key`` and, on
AMQP, the ``user_id`` property set to this miner's broker user, which RabbitMQ validates: the receiver drops
chunks without both (``heurist.stream_auth``).
"""

from __future__ import annotations

import logging
from types import TracebackType
from typing import Any

from kombu import Producer
from kombu.pools import ProducerPool

from heurist.jobs import JobMessage, TokenChunk
from heurist.stream_auth import sealed
from heurist.streams import publisher_user, stream_route
from workers.miner.pipelines.backend import OnToken

log = logging.getLogger(__name__)


class TokenPublisher:
    """One job's stream: ``on_token`` for the pipeline, then ``finish`` (or an error on exit) sends ``done``.

    It borrows a connection from the worker's producer pool but publishes on a channel of its own, so a
    broker-side refusal (no exchange, no permission) closes only that channel, not Celery's.
    """

    def __init__(self, producers: ProducerPool, job_id: str, key: str) -> None:
        self.producers = producers
        self.job_id = job_id
        self.key = key
        self._user: dict[str, str] = {}
        self.index = 0
        self.failed = False
        self.finished = False
        self.on_token: OnToken | None = self._publish_token
        self._lease: Any = None
        self._channel: Any = None

    def __enter__(self) -> TokenPublisher:
        try:
            self._lease = self.producers.acquire(block=True, timeout=5)
            self._channel = self._lease.connection.channel()
            self._exchange, self._routing_key = stream_route(self._lease.connection, self.job_id)
            user = publisher_user(self._lease.connection)
            self._user = {} if user is None else {"user_id": user}
            self._producer = Producer(self._channel)
        except Exception:
            self._fail("could not open a channel")
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if not self.finished:
            self.finish("error")  # the job failed: end the stream rather than leave the application waiting
        try:
            if self._channel is not None:
                self._channel.close()
        except Exception as err:  # the broker may have closed the channel after a refused publish
            log.warning("job %s: closing its token stream failed: %s", self.job_id, err)
        finally:
            if self._lease is not None:
                self._lease.release()

    def finish(self, finish_reason: str | None) -> None:
        """Send the ``done`` chunk (no token) with why generation stopped."""
        self.finished = True
        self._send(text="", done=True, finish_reason=finish_reason)

    def _publish_token(self, token_id: int, text: str) -> None:
        self._send(text=text, token_id=token_id)
        self.index += 1

    def _send(self, **fields: Any) -> None:
        if self.failed:
            return
        try:
            chunk: TokenChunk = sealed(self.key, job_id=self.job_id, index=self.index, **fields)
            self._producer.publish(chunk.model_dump(mode="json"), exchange=self._exchange,
                                   routing_key=self._routing_key, serializer="json", delivery_mode=1,
                                   retry=False, **self._user)
        except Exception:
            self._fail(f"publishing chunk {self.index} failed")

    def _fail(self, what: str) -> None:
        self.failed = True
        log.warning("job %s: %s; streaming stops, the job goes on", self.job_id, what, exc_info=True)


class NoStream:
    """The stream of a job that asked for none: no callback, nothing sent."""

    on_token: OnToken | None = None

    def __enter__(self) -> NoStream:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def finish(self, finish_reason: str | None) -> None:
        return None


def token_stream(job: JobMessage, producers: ProducerPool | None) -> TokenPublisher | NoStream:
    """The publisher for ``job``: a real one only if it asked to stream and the worker has a broker."""
    if job.stream and job.stream_key is not None and producers is not None:
        return TokenPublisher(producers, job.job_id, job.stream_key)
    return NoStream()
