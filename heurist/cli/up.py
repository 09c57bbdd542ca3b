"""``heurist up``: the embedded network plus the REST gateway, in the foreground until Ctrl-C."""

from __future__ import annotations

import errno
import signal
import socket
from pathlib import Path

import typer

from heurist.cli.common import console, err_console, settings_with
from heurist.cli.demo import _interrupt, say_restart
from heurist.client import Client
from heurist.embedded import EmbeddedNetwork, wait_until
from heurist.errors import ConfigError, HeuristError
from heurist.search.index import VectorIndex
from heurist.search.ingest import demo_documents


def up(
    host: str = typer.Option("127.0.0.1", "--host", help="Interface the gateway binds (0.0.0.0 for every one)."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="The gateway's TCP port."),
    data_dir: Path = typer.Option(Path(".heurist/up"), "--data-dir", help="Embedded state: broker, ledger, S3."),
    models_dir: Path = typer.Option(Path(".heurist/models"), "--models-dir", help="Built models (kept)."),
    units: float = typer.Option(100.0, "--units", min=0.0, help="Credits on the API key printed at start."),
    fresh: bool = typer.Option(True, "--fresh/--keep", help="Reset the embedded state, or keep the last run's."),
) -> None:
    """Start the embedded network (SQLite broker and ledger, SeaweedFS, a CPU miner serving tiny-sd and
    smollm2-135m, an auditor) and serve the gateway on --port until Ctrl-C; then stop every process.
    A process that dies is restarted (a line says so), SeaweedFS on the same port."""
    import uvicorn

    from heurist.credits.ledger import CreditLedger
    from heurist.gateway.app import create_app

    sock = _bind(host, port)  # a busy port fails before anything starts
    signal.signal(signal.SIGTERM, _interrupt)  # a plain `kill` cleans up like Ctrl-C
    try:
        with EmbeddedNetwork(data_dir.resolve(), base=settings_with(), models_dir=models_dir.resolve(),
                             fresh=fresh, on_restart=say_restart) as net:
            miner = net.start_miner(name="miner")
            net.start_auditor()
            settings = net.settings()
            with Client(settings) as client:
                with err_console.status("miner: verifying model files and loading pipelines"):
                    wait_until(lambda: client.ledger.is_registered(miner.address), 600, "the miner to start",
                               check=net.check_alive)
                credits = CreditLedger(client.ledger.engine)  # opened by open_engine: migrated, credit tables too
                _, key = credits.create_key("heurist-up", units)
                app = create_app(settings, client, credits)
                _ingest_demo_corpus(app.state.search.index)
                _print_banner(f"http://{_url_host(host)}:{port}/v1", key, units)
                config = uvicorn.Config(app, log_level="warning")
                server = uvicorn.Server(config)
                server.run(sockets=[sock])  # re-raises the SIGINT or SIGTERM it caught once it shut down
                if not server.started:
                    raise HeuristError(f"the gateway did not start on {host}:{port}")
                raise KeyboardInterrupt
    finally:
        sock.close()


def _bind(host: str, port: int) -> socket.socket:
    """The gateway's listening socket, bound now so a busy port is a one-line error, not a late crash."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # not past a listener: only past TIME_WAIT
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        if err.errno == errno.EADDRINUSE:
            raise ConfigError(f"--port: {host}:{port} is already in use; pick another with --port") from None
        raise ConfigError(f"--host/--port: cannot bind {host}:{port}: {err.strerror}") from None
    sock.set_inheritable(False)
    return sock


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _ingest_demo_corpus(index: VectorIndex) -> None:
    """So a new user can ask a question at once: the shipped corpus, unless documents are there already."""
    if index.document_count():
        return
    with err_console.status("search: embedding the demo corpus (all-MiniLM-L6-v2)"):
        for doc in demo_documents():
            index.add_document(doc.title, doc.text, source="demo")


def _say(text: str) -> None:
    console.print(text, soft_wrap=True, highlight=False, markup=False)


def _print_banner(base_url: str, key: str, units: float) -> None:
    _say(f"API key (shown once, {units:g} credits): {key}")
    _say(f"gateway: {base_url}")
    _say("\ntry it:")
    _say(f"curl -s {base_url}/images/generations -H 'Authorization: Bearer {key}' "
         "-H 'Content-Type: application/json' \\\n"
         "  -d '{\"prompt\": \"a red fox\", \"model\": \"tiny-sd\", \"width\": 64, \"height\": 64, \"steps\": 8}'")
    _say("\nfrom openai import OpenAI\n"
         f"ai = OpenAI(base_url=\"{base_url}\", api_key=\"{key}\")\n"
         "answer = ai.chat.completions.create(model=\"smollm2-135m\", max_tokens=32,\n"
         "    messages=[{\"role\": \"user\", \"content\": \"Name three colors.\"}])\n"
         "print(answer.choices[0].message.content)\n")
    _say(f"curl -s {base_url}/search -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' "
         "-d '{\"question\": \"How are cheating miners caught?\"}'")
    _say("serving until Ctrl-C")
