"""The FastAPI app: routers, error handlers and shared state, built once from settings (no torch here)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from heurist.client import Client
from heurist.credits.ledger import CreditLedger
from heurist.credits.reconcile import Reconciler
from heurist.economy.service import Economy
from heurist.gateway import economy, errors, images, jobs, llm, search
from heurist.gateway.deps import Gateway
from heurist.gateway.ratelimit import RateLimiter
from heurist.settings import Settings


def create_app(settings: Settings, client: Client, credits: CreditLedger) -> FastAPI:
    """The gateway for one network: ``client`` sends the jobs, ``credits`` holds the API keys."""
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        """While serving, sweep the charges of jobs that ended after their request gave up (504)."""
        reconciler = Reconciler(credits, client.ledger, client.catalog, settings.gateway_reconcile_interval_s)
        reconciler.start()
        try:
            yield
        finally:
            reconciler.stop()

    app = FastAPI(title="Heurist gateway", version="0.1.0", lifespan=lifespan,
                  description="Inference on the Heurist network, charged in Standard Credit Units per API key.")
    limiter = RateLimiter(credits.engine, settings.gateway_rate_per_minute)
    app.state.gateway = Gateway(settings, client, credits, limiter)
    app.state.search = search.SearchService(app.state.gateway)
    app.state.economy = Economy.from_settings(settings, credits.engine)  # reads and signed actions, no key
    errors.install(app)
    app.include_router(images.router)
    app.include_router(jobs.router)
    app.include_router(llm.router)
    app.include_router(search.router)
    app.include_router(economy.router)
    return app


def app_from_settings(settings: Settings) -> FastAPI:
    """What ``heurist gateway`` serves: the ledger database migrated, the client's broker connection opened
    lazily. The object store is made first, so missing S3 keys stop the gateway at start, not at a request.
    The credit ledger shares the client's engine (``open_reader``: migrated once, one connection pool)."""
    from heurist.storage import make_store

    client = Client(settings, store=make_store(settings))
    return create_app(settings, client, CreditLedger(client.ledger.engine))
