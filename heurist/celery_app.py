"""Build the Celery app for a role from the one settings object."""

from __future__ import annotations

from typing import Any

from celery import Celery

from heurist import broker
from heurist.settings import Settings


def create_app(settings: Settings, **attributes: Any) -> Celery:
    """A Celery app on the configured broker. ``attributes`` (the miner runtime, the ledger) are set on
    the app so tasks reach them as ``self.app.<name>`` without module-level globals."""
    broker.register()
    app = Celery("heurist", broker=settings.resolved_broker_url(), set_as_current=False)
    app.config_from_object("celeryconfig")
    app.conf.broker_connection_retry_on_startup = True
    for name, value in attributes.items():
        setattr(app, name, value)
    return app
