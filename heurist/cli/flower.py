"""``heurist flower``: Flower, the Celery dashboard, on the configured broker behind basic auth.

Flower runs in this process with the network's own Celery app (JSON only, the same broker settings), so it
needs no ``-A`` module path and no secret ever appears on a command line or in ``FLOWER_*`` variables.
Static options come from ``monitoring/flowerconfig.py``; broker, credentials and the management API from
the settings. Flower is trusted: it connects with an administrator's broker user, never a miner's.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import typer

from heurist.celery_app import create_app
from heurist.cli.common import console, redacted, settings_with
from heurist.errors import ConfigError
from heurist.settings import Settings, is_amqp

CONFIG_NAME = Path("monitoring") / "flowerconfig.py"


def management_api(admin_url: str) -> str:
    """Flower wants RabbitMQ's management API as ``http://user:pass@host:15672/api/`` (it appends
    ``queues/<vhost>``); the setting may be given with or without the ``/api`` path."""
    parts = urlsplit(admin_url)
    path = parts.path.rstrip("/")
    if not path.endswith("/api"):
        path += "/api"
    return urlunsplit((parts.scheme, parts.netloc, path + "/", "", ""))


def flower_options(settings: Settings, port: int, address: str) -> dict[str, Any]:
    """The per-deployment Flower options; ConfigError before anything starts if Flower would be open or blind."""
    if settings.flower_password is None or not settings.flower_password.get_secret_value():
        raise ConfigError("HEURIST_FLOWER_PASSWORD is not set: Flower never starts as an open dashboard; set it "
                          "(e.g. HEURIST_FLOWER_PASSWORD=$(openssl rand -hex 16)) and HEURIST_FLOWER_USER (default "
                          "'admin')")
    broker_url = settings.resolved_broker_url()
    if not is_amqp(broker_url):
        raise ConfigError(f"Flower needs RabbitMQ, not {redacted(broker_url)}: the embedded SQLite broker cannot "
                          "broadcast `inspect` or carry worker events between processes; set HEURIST_BROKER_URL "
                          "to an amqp:// URL of an administrator user")
    options: dict[str, Any] = {
        "port": port,
        "address": address,
        "basic_auth": [f"{settings.flower_user}:{settings.flower_password.get_secret_value()}"],
    }
    admin_url = settings.resolved_broker_admin_url()
    if admin_url:
        options["broker_api"] = management_api(admin_url)
    return options


def find_config(conf: Path | None) -> Path | None:
    """``--conf`` if given (it must exist); else ``monitoring/flowerconfig.py`` of this source tree or of the
    working directory (the Docker image's /app)."""
    if conf is not None:
        if not conf.is_file():
            raise ConfigError(f"--conf {conf}: no such file (Flower's static options, see {CONFIG_NAME})")
        return conf
    for root in (Path(__file__).resolve().parents[2], Path.cwd()):
        if (root / CONFIG_NAME).is_file():
            return root / CONFIG_NAME
    return None


def _stop_on_sigterm(_signum: int, _frame: FrameType | None) -> None:
    sys.exit(0)  # unwinds Flower's event loop: `docker stop` and test teardown end it cleanly


def run_flower(settings: Settings, options: dict[str, Any], conf: Path | None) -> None:
    """Serve Flower until SIGTERM or Ctrl-C: static options from ``conf``, then ``options`` over them."""
    from flower.app import Flower
    from flower.command import extract_settings, setup_logging
    from flower.urls import settings as flower_settings
    from tornado.log import enable_pretty_logging
    from tornado.options import options as tornado_options
    from tornado.options import parse_config_file

    if conf is not None:
        parse_config_file(str(conf.resolve()), final=False)
    for name, value in options.items():
        setattr(tornado_options, name, value)
    extract_settings()
    setup_logging()
    enable_pretty_logging()
    app = create_app(settings)
    dashboard = Flower(capp=app, options=tornado_options, **flower_settings)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    bound = dashboard.start_http_server()
    console.print(f"Flower on http://{options['address'] or '0.0.0.0'}:{bound}/ (user {settings.flower_user}), "
                  f"broker {redacted(settings.resolved_broker_url())}, config {conf or 'built-in defaults'}")
    try:
        dashboard.start()
    except SystemExit:
        pass
    finally:
        dashboard.stop()


def flower(
    port: int = typer.Option(5555, "--port", min=0, max=65535, help="TCP port (0: any free one)."),
    address: str = typer.Option("127.0.0.1", "--address",
                                help="Interface to bind (0.0.0.0 for every one, e.g. in a container)."),
    broker: str | None = typer.Option(None, "--broker",
                                      help="Broker URL of an administrator user (default: HEURIST_BROKER_URL)."),
    conf: Path | None = typer.Option(None, "--conf", help=f"Flower's static options (default: {CONFIG_NAME})."),
) -> None:
    """Serve Flower, the Celery dashboard: miners (`miner-<address>-<tier>@host`), their queues and queue lengths
    (from RabbitMQ's management API, HEURIST_BROKER_ADMIN_URL), tasks. Basic auth: HEURIST_FLOWER_USER and
    HEURIST_FLOWER_PASSWORD (required). Read-only by default (monitoring/flowerconfig.py)."""
    settings = settings_with(broker_url=broker)
    options = flower_options(settings, port, address)
    run_flower(settings, options, find_config(conf))
