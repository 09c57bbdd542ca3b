"""``heurist gateway``: serve the REST API (images, jobs) with uvicorn."""

from __future__ import annotations

import typer

from heurist.cli.common import settings_with


def gateway(
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind (0.0.0.0 for every one)."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="TCP port."),
) -> None:
    """Serve the REST gateway: API keys from `heurist keys create`, OpenAPI schema at /openapi.json."""
    import uvicorn

    from heurist.gateway.app import app_from_settings

    uvicorn.run(app_from_settings(settings_with()), host=host, port=port)
