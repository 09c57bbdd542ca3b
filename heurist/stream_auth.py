"""Authentic streams: which streamed chunks an application may show, and the check against the verified answer.

``heurist.stream`` is writable by every miner, so a chunk is only a claim. Three things make a stream authentic
(issue 12, attack 8: a victim's stream read "…is Berlin. Send your API key to https://evil.example/verify"
while the verified answer was "Paris."):

1. **A per-job stream key.** The receiver (``heurist.streams.TokenStream``) makes 32 random bytes; the dispatcher
   puts them in the job message (``JobMessage.stream_key``), and the miner MACs every chunk with them:
   HMAC-SHA256 over a domain tag and the chunk's canonical JSON (job id, index, text, token id, done, finish
   reason). A chunk without a valid MAC is dropped: a miner that never saw the job cannot write into its stream.
2. **The broker-validated user.** On AMQP the miner publishes with the ``user_id`` property set to its broker
   user, and RabbitMQ refuses a publish whose ``user_id`` is not the connection's user. The receiver drops chunks
   without one and locks the stream to the first user that sent a valid chunk; valid chunks from any other
   user are dropped, counted and logged by name (the key leaked: one of the two read a job it does not hold).
3. **The final check.** When the ledger has verified the stored ``TextOutput``, the text shown must be the
   verified text or a prefix of it (the rest is then sent from the verified answer, never from a miner).
   Otherwise the gateway sends an error event instead of the final one, naming the stream's broker user, and,
   when the ledger knows the completing miner's broker user (``miners.broker_user``) and it is another, saying
   so: the stream's user read the job without holding it.

What remains: a miner serving the same tier can read the job message (and so the key) from the queue with
``basic_get`` and a requeue, as consuming needs the read right. It can then race the honest miner. At worst
its chunks are shown as previews until the stream ends, and then the final check turns the stream into an
error event with its broker user named, never into a final event with its text. No scheme can do better
before the completion arrives: everything in the job message is readable by such a miner, and only the broker
knows who holds the delivery. An attacker that wins the lock but sends only a prefix of the true answer (or
an early ``done``) gains nothing: the verified rest is sent and the stream ends normally.

The embedded SQLite broker has no users: anyone who can open its file reads every queue, so there the MAC
and the final check hold, and the user lock does not.

Cost, measured here (2 shared cores): sealing a chunk 67 µs, checking one 46 µs (mostly the canonical JSON),
against about 65 ms per generated token for SmolLM2-135M on this CPU.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
from typing import Any

from heurist.errors import HeuristError
from heurist.jobs import TokenChunk

DOMAIN = b"heurist/stream-chunk/v1\x00"
KEY_HEX_CHARS = 64  # 32 bytes
MAX_CHUNK_BYTES = 16_384  # one token's text is a few bytes; bigger messages are dropped before parsing

log = logging.getLogger(__name__)


class StreamMismatchError(HeuristError):
    """The streamed text is not the verified answer, or came from a broker user other than the completing miner."""

    def __init__(self, message: str, broker_user: str | None, public: str | None = None) -> None:
        super().__init__(message, public=public)
        self.broker_user = broker_user


def new_stream_key() -> str:
    """A fresh per-job stream key (hex), for ``JobMessage.stream_key``."""
    return secrets.token_hex(KEY_HEX_CHARS // 2)


def chunk_mac(key: str, chunk: TokenChunk) -> str:
    """HMAC-SHA256 (hex) of ``chunk`` without its ``mac``, under the job's stream key."""
    fields = chunk.model_dump(mode="json", exclude={"mac"})
    body = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return hmac.new(bytes.fromhex(key), DOMAIN + body, hashlib.sha256).hexdigest()


def sealed(key: str, **fields: Any) -> TokenChunk:
    """A chunk with its MAC, as the miner publishes it."""
    chunk = TokenChunk(**fields)
    return chunk.model_copy(update={"mac": chunk_mac(key, chunk)})


def mac_ok(key: str, chunk: TokenChunk) -> bool:
    return chunk.mac is not None and hmac.compare_digest(chunk.mac, chunk_mac(key, chunk))


def check_stream(job_id: str, shown: str, verified: str, stream_user: str | None,
                 completing_user: str | None) -> str:
    """The part of ``verified`` still to send after ``shown``; StreamMismatchError if what was shown is not it.

    ``completing_user`` is the broker user of the miner whose completion the ledger verified (None when the ledger
    knows none: the embedded broker, a miner on a trusted user). A stream locked to another user was written by
    a miner that read the job without holding it: that is logged, and named in the error's message (for the
operator's log; API callers read its ``public`` text, which names no miner). It is not an error by
    itself when what it showed is a prefix of the verified answer (an early ``done``), or any same-tier miner
    could break every stream of its tier with one keyed empty chunk per job.
    """
    who = f"broker user {stream_user!r}" if stream_user else "a sender without a broker user (embedded broker)"
    impostor = completing_user is not None and stream_user != completing_user
    if impostor:
        log.warning("job %s: the stream was locked to %s, not to the completing miner's broker user %r, which "
                    "holds the job: %s read it from the tier queue", job_id, who, completing_user, stream_user)
    if not verified.startswith(shown):
        proof = (f"; the completing miner is broker user {completing_user!r}, so {who} injected it" if impostor
                 else "")
        raise StreamMismatchError(
            f"job {job_id}: the streamed text ({len(shown)} chars from {who}) is not the verified answer "
            f"({len(verified)} chars){proof}; disregard what was streamed, the verified answer is in the job's "
            f"stored output (GET /v1/jobs/{job_id})", stream_user,
            public=f"job {job_id}: the streamed text is not the verified answer; disregard what was streamed, the "
                   f"verified answer is in the job's stored output (GET /v1/jobs/{job_id})")
    return verified[len(shown):]
