"""Every error as an OpenAI-style object ``{"error": {"message", "type", "param", "code"}}``, one shape for all.

The database being away is a 503 ``database_unavailable`` (retry later), whichever route met it: a key's
authentication, a rate-limit bucket, a reservation, a job's status, or a wait that ran out during the outage
(``heurist.client.LedgerUnavailableError``, which says the jobs keep running). Any other database error is a
500 in the same shape; the traceback goes to the gateway's log, never to the caller."""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from heurist.client import LedgerUnavailableError
from heurist.confirms import BrokerUnavailableError
from heurist.credits.ledger import InsufficientCreditsError, UnknownKeyError
from heurist.db.engine import is_disconnect
from heurist.errors import ConfigError, HeuristError, InvalidJobError, JobFailedError, StorageError, UnknownModelError

log = logging.getLogger(__name__)

_FIELD = re.compile(r"^([a-z_][a-z_0-9.]*)[=:]")


class ApiError(Exception):
    """An HTTP error the gateway raises on purpose."""

    def __init__(self, status: int, message: str, *, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers, self.extra = headers, extra


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None,
               **extra: Any) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code, **extra}}


def _respond(err: ApiError) -> JSONResponse:
    return JSONResponse(error_body(err.message, err.type, err.param, err.code, **err.extra), status_code=err.status,
                        headers=err.headers)


def _field_of(message: str) -> str | None:
    """Submission errors start with the field they are about ("width=63 must be ..."); name it."""
    found = _FIELD.match(message)
    return found.group(1) if found else None


# A service that is away: 503. A job the broker never confirmed was recorded failed and refunded (heurist.confirms).
_UNAVAILABLE = ((StorageError, "storage_unavailable"), (BrokerUnavailableError, "queue_unavailable"))


def _unavailable(err: HeuristError, message: str) -> ApiError | None:
    for kind, code in _UNAVAILABLE:
        if isinstance(err, kind):
            return ApiError(503, message, type_="service_unavailable", code=code)
    return None


def from_heurist(err: HeuristError) -> ApiError:
    """Map a library error to its HTTP status, keeping its message (written for people), or its ``public``
    text where the message names internals (miners, hosts, buckets, URLs); those are logged, never sent."""
    message = err.public or str(err)
    if err.public is not None:
        log.warning("answered an API caller with %r for: %s", err.public, err)
    if (unavailable := _unavailable(err, message)) is not None:
        return unavailable
    if isinstance(err, LedgerUnavailableError):
        return ApiError(503, message, type_="service_unavailable", code="database_unavailable",
                        headers={"Retry-After": str(DATABASE_RETRY_AFTER_S)}, job_ids=list(err.job_ids))
    if isinstance(err, ConfigError):
        return ApiError(500, message, type_="server_error", code="misconfigured")
    if isinstance(err, InsufficientCreditsError):
        return ApiError(402, message, type_="insufficient_credits", code="insufficient_credits")
    if isinstance(err, UnknownModelError):
        return ApiError(404, message, param="model", code="model_not_found")
    if isinstance(err, UnknownKeyError):
        return ApiError(404, message, code="not_found")
    if isinstance(err, JobFailedError):
        return ApiError(502, message, type_="job_failed", code="job_failed")
    if isinstance(err, InvalidJobError):
        field = _field_of(message) or ("model" if message.startswith("model ") else None)
        return ApiError(422, message, param=field, code="invalid_value")
    return ApiError(400, message)


async def _api_error(_: Request, err: Exception) -> JSONResponse:
    assert isinstance(err, ApiError)
    return _respond(err)


async def _heurist_error(_: Request, err: Exception) -> JSONResponse:
    assert isinstance(err, HeuristError)
    return _respond(from_heurist(err))


DATABASE_RETRY_AFTER_S = 30
DATABASE_DOWN = "the ledger's database is unavailable: retry in a minute"


def from_database(err: Exception) -> ApiError:
    """503 naming the database when it is unreachable (``heurist.db.engine.is_disconnect``), else a 500; logged."""
    if isinstance(err, DBAPIError | SQLAlchemyError) and is_disconnect(err):
        log.warning("answered 503: the database is unreachable (%s)", " ".join(str(err).split())[:300])
        return ApiError(503, DATABASE_DOWN, type_="service_unavailable", code="database_unavailable",
                        headers={"Retry-After": str(DATABASE_RETRY_AFTER_S)})
    log.error("database error answered with 500", exc_info=err)
    return ApiError(500, "internal error; it is logged", type_="server_error", code="internal_error")


async def _database_error(_: Request, err: Exception) -> JSONResponse:
    return _respond(from_database(err))


async def _validation_error(_: Request, err: Exception) -> JSONResponse:
    """422 naming the first bad field (``body.width`` -> ``width``), like the library's own errors."""
    assert isinstance(err, RequestValidationError)
    first = err.errors()[0] if err.errors() else {"loc": (), "msg": "invalid request"}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "header")]
    field = ".".join(loc) or None
    message = f"{field}: {first.get('msg')}" if field else str(first.get("msg"))
    return _respond(ApiError(422, message, param=field, code="invalid_value"))


def install(app: FastAPI) -> None:
    """Register the handlers so no error leaves the gateway in another shape."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(HeuristError, _heurist_error)
    app.add_exception_handler(SQLAlchemyError, _database_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
