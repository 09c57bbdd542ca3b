"""What gateway routes depend on, in one place: the services ``create_app`` builds once, the caller's API key,
and the error responses every route documents.

Routers import these from here, not from a sibling router (``images`` used to define ``Gateway`` and
``ERRORS`` for every other router, and ``charging`` imported them back). Handlers receive the services through
FastAPI's ``Depends`` (``gw: Gateway = Depends(gateway)``), not by reading ``request.app.state`` themselves, so
a test can override one dependency without building the whole app.

A request passes ``api_key`` (401 without a valid, enabled key; only sha256 hashes are stored) and then
``limited_key`` (429 with Retry-After once the key's bucket is empty, ``heurist.gateway.ratelimit``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from heurist.client import Client
from heurist.credits.ledger import CreditLedger
from heurist.credits.tables import ApiKey
from heurist.gateway.errors import ApiError
from heurist.gateway.ratelimit import RateLimiter
from heurist.gateway.schemas import ErrorResponse
from heurist.settings import Settings

ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 402, 404, 422, 429, 502, 503, 504)}

bearer = HTTPBearer(auto_error=False, description="An API key from `heurist keys create`.")


@dataclass(frozen=True)
class Gateway:
    """What a request handler needs, built once by ``create_app`` and kept on ``app.state.gateway``."""

    settings: Settings
    client: Client
    credits: CreditLedger
    limiter: RateLimiter


def gateway(request: Request) -> Gateway:
    """The app's ``Gateway``: the dependency every route takes."""
    gw: Gateway = request.app.state.gateway
    return gw


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, message, type_="authentication_error", code="invalid_api_key",
                    headers={"WWW-Authenticate": "Bearer"})


async def api_key(gw: Gateway = Depends(gateway),
                  creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> ApiKey:
    """The caller's enabled key, or 401: every endpoint spends or reads a key's own data."""
    if creds is None or not creds.credentials:
        raise _unauthorized("no API key: send `Authorization: Bearer hk_...` (create one with `heurist keys create`)")
    key = await run_in_threadpool(gw.credits.authenticate, creds.credentials)
    if key is None:
        raise _unauthorized("invalid or disabled API key")
    return key


async def limited_key(gw: Gateway = Depends(gateway), key: ApiKey = Depends(api_key)) -> ApiKey:
    """The authenticated key, or 429 with Retry-After once its bucket is empty."""
    wait = await run_in_threadpool(gw.limiter.take, key.id)
    if wait > 0:
        raise ApiError(429, f"rate limit of {gw.limiter.capacity:g} requests per minute reached; retry in "
                       f"{wait:.1f}s", type_="rate_limit_error", code="rate_limited",
                       headers={"Retry-After": str(math.ceil(wait))})
    return key
