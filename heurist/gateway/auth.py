"""Bearer API keys, checked against the credit ledger (only hashes are stored)."""

from __future__ import annotations

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from heurist.credits.ledger import CreditLedger
from heurist.credits.tables import ApiKey
from heurist.gateway.errors import ApiError

bearer = HTTPBearer(auto_error=False, description="An API key from `heurist keys create`.")


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, message, type_="authentication_error", code="invalid_api_key",
                    headers={"WWW-Authenticate": "Bearer"})


async def api_key(request: Request, creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> ApiKey:
    """The caller's enabled key, or 401: every endpoint spends or reads a key's own data."""
    if creds is None or not creds.credentials:
        raise _unauthorized("no API key: send `Authorization: Bearer hk_...` (create one with `heurist keys create`)")
    credits: CreditLedger = request.app.state.credits
    key = await run_in_threadpool(credits.authenticate, creds.credentials)
    if key is None:
        raise _unauthorized("invalid or disabled API key")
    return key
