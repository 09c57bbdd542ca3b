"""What every CLI command shares: one console, settings with flag overrides, output helpers."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console

from heurist.settings import Settings, get_settings

console = Console()
err_console = Console(stderr=True)


def settings_with(**overrides: Any) -> Settings:
    """The process settings, with command-line flags (those not None) taking precedence."""
    updates = {k: v for k, v in overrides.items() if v is not None}
    base = get_settings()
    return base.model_copy(update=updates) if updates else base


def print_json(data: Any) -> None:
    """One JSON object on one line of stdout: easy for scripts to take the last line."""
    print(json.dumps(data, sort_keys=True, default=str), flush=True)


def split_csv(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


def redacted(url: str) -> str:
    """A database or broker URL safe to print: the password hidden."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a SQLAlchemy URL (e.g. amqp://): hide everything between :// and @
        scheme, _, rest = url.partition("://")
        return f"{scheme}://***@{rest.rpartition('@')[2]}" if "@" in rest else url
