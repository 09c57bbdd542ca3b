"""What an attacker holds in these tests: raw AMQP on its own restricted broker user, a local HTTP server, and
Celery protocol-2 messages written by hand (no Celery app, so nothing of ours shapes them)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from amqp.exceptions import ChannelError
from kombu import Connection, Producer

from heurist.access import BrokerAccess, MinerCredentials
from heurist.access.backend import inbox_exchange, inbox_name
from heurist.client import Client
from heurist.dispatch import job_message
from heurist.embedded import wait_until
from heurist.identity import Wallet
from heurist.jobs import DeviceInfo, ImageParams, MinerHello, SignedHello, SignedJob, TextParams
from heurist.signing import sign_message
from tasks.names import REGISTER_MINER, RUN_JOB


def task_message(task: str, args: list[Any], task_id: str | None = None,
                 embed: dict[str, Any] | None = None) -> tuple[dict[str, Any], list[Any]]:
    """Headers and body of a Celery protocol-2 message calling ``task(*args)``; ``embed``: callbacks and such."""
    task_id = task_id or str(uuid.uuid4())
    headers = {"lang": "py", "task": task, "id": task_id, "root_id": task_id, "parent_id": None, "group": None,
               "retries": 0, "eta": None, "expires": None, "timelimit": [None, None], "argsrepr": "(...)",
               "kwargsrepr": "{}", "origin": "attacker", "ignore_result": True}
    body_embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None, **(embed or {})}
    return headers, [args, {}, body_embed]


def publish(broker_url: str, exchange: str, message: tuple[dict[str, Any], list[Any]], routing_key: str | None = None,
            **properties: Any) -> None:
    """Publish ``message`` declaring nothing, with publisher confirms: a refusal by the broker raises at once."""
    headers, body = message
    with Connection(broker_url, transport_options={"confirm_publish": True}) as conn:
        Producer(conn.channel()).publish(body, exchange=exchange, routing_key=routing_key or exchange,
                                         headers=headers, serializer="json", retry=False, **properties)


@dataclass
class Trap:
    """An attacker's HTTP server: it records every request that reaches it (SSRF, stolen uploads)."""

    url: str
    hits: list[str] = field(default_factory=list)


@contextmanager
def http_trap() -> Iterator[Trap]:
    trap = Trap("")

    class Handler(BaseHTTPRequestHandler):
        def _record(self) -> None:
            trap.hits.append(f"{self.command} {self.path}")
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _record

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    trap.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield trap
    finally:
        server.shutdown()
        server.server_close()


@dataclass(frozen=True)
class Attacker:
    """A miner's key and its own restricted broker user (``heurist broker add-miner``)."""

    wallet: Wallet
    creds: MinerCredentials

    def try_tier(self, queue: str, message: tuple[dict[str, Any], list[Any]], **properties: Any) -> bool:
        """Publish into a tier queue's exchange as itself; False when the broker refuses (miners may write only
        their inbox and the stream exchange, ``heurist.access.permissions``)."""
        try:
            publish(self.creds.broker_url, queue, message, **properties)
        except ChannelError:
            return False
        return True

    def to_ledger(self, message: tuple[dict[str, Any], list[Any]]) -> None:
        """Publish into its own inbox, its one way to the ledger (the broker checks ``user_id``)."""
        user = self.creds.user
        publish(self.creds.broker_url, inbox_exchange(user), message, routing_key=inbox_name(user), user_id=user)


def registered_attacker(client: Client, access: BrokerAccess, model: str) -> Attacker:
    """A new key on its own broker user, registered by a signed hello sent through its own inbox, as ``heurist
    miner`` would make it (serving ``model`` on a cpu), driven by hand from here on."""
    wallet = Wallet.create()
    attacker = Attacker(wallet, access.add_miner(wallet.address))
    hello = MinerHello(miner=wallet.address, models=[model], queues=[client.catalog[model].queue],
                       device=DeviceInfo(kind="cpu", name="cpu", vram_gb=8.0), started_at=time.time())
    signed = SignedHello(hello=hello, signature=sign_message(wallet, hello))
    attacker.to_ledger(task_message(REGISTER_MINER, [signed.model_dump(mode="json")]))
    wait_until(lambda: client.ledger.is_registered(wallet.address), 60, "the attacker's key to register")
    return attacker


def smuggle(client: Client, attacker: Attacker, queue: str, payload: Any, task_id: str,
            embed: dict[str, Any] | None = None, **properties: Any) -> None:
    """Put a ``run_job`` message into a tier queue. The broker refuses the attacker's own publish; the message is
    then published with the trusted side's user, standing in for a broker that lets it through (the embedded
    SQLite broker has no users; a vhost set up before ``heurist broker setup``), so the miner's own checks are
    what is tested."""
    message = task_message(RUN_JOB, [payload], task_id, embed)
    assert not attacker.try_tier(queue, message, **properties), "the broker let a miner publish into a tier queue"
    publish(client.app.conf.broker_url, queue, message, routing_key=queue, **properties)


def recorded_job(client: Client, model: str, params: ImageParams | TextParams,
                 deadline_s: float = 300) -> tuple[SignedJob, str]:
    """A victim's job as ``Client.submit_params`` makes it, recorded and signed but not yet sent."""
    spec = client.catalog[model]
    job_id = str(uuid.uuid4())
    key = f"outputs/{model}/{job_id}{'.json' if params.kind == 'text' else '.png'}"
    deadline_at = time.time() + deadline_s
    message = job_message(job_id, model, params, key, deadline_at, client.store, 600)
    client.job_book.create_job(job_id, spec, params, key, spec.queue, deadline_at)
    return client.signer.sign(message), key
