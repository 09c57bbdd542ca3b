"""A key-release node's HTTP face: ``POST /v1/share`` and ``GET /v1/health`` (FastAPI, served by uvicorn).

* ``POST /v1/share``: body a ``SignedKeyRequest``. 200: a ``ShareGrant``; 403: ``{"detail": reason}``, a
  refusal (never key material); 422: not JSON (bad UTF-8 included, or nested too deep for the parser: 16 KB
  of "[" is 16,384 levels, past Python's default recursion limit of 1000; py_ecc raises the limit to 100,000
  on import, which this process does not rely on) or not a request; 413: a body over 16 KB, refused while it
  is read, before any parsing (a real request is about 600 bytes); 503: the ledger's database is unreachable.
* ``GET /v1/health``: ``{"node": i, "public_key": hex}``, what ``heurist keyrelease init`` printed.

The decision (``KeyReleaseNode.answer``) does blocking database reads and writes, so it runs in the thread
pool, not on the event loop.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from starlette.concurrency import run_in_threadpool

from heurist.db.engine import is_disconnect
from heurist.privacy.keyrelease.node import KeyReleaseNode, MalformedRequest, Refused

MAX_BODY_BYTES = 16 * 1024


class _TooLarge(Exception):
    pass


async def _body(request: Request) -> bytes:
    """The body, or ``_TooLarge`` as soon as it passes ``MAX_BODY_BYTES`` (whatever Content-Length says)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _TooLarge
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _parse(body: bytes) -> tuple[str | None, Any]:
    """(None, the JSON value) or (why the body is not JSON, None). ``UnicodeDecodeError`` is a ``ValueError``;
    ``RecursionError`` (deep nesting) is not, and would otherwise be a 500 with a traceback."""
    try:
        return None, json.loads(body)
    except RecursionError:
        return "body: JSON nested too deeply (send a SignedKeyRequest)", None
    except ValueError:
        return "body: not JSON (send a SignedKeyRequest)", None


def create_app(node: KeyReleaseNode) -> FastAPI:
    """The HTTP app of ``node``; one process serves one node."""
    app = FastAPI(title=f"Heurist key-release node {node.index}", docs_url=None, redoc_url=None)

    @app.get("/v1/health")
    def health() -> dict[str, Any]:
        return {"node": node.index, "public_key": bytes(node.public_key).hex()}

    @app.post("/v1/share")
    async def share(request: Request) -> JSONResponse:
        try:
            body = await _body(request)
        except _TooLarge:
            return JSONResponse({"detail": f"body over {MAX_BODY_BYTES} bytes"}, status_code=413)
        problem, payload = _parse(body)
        if problem is not None:
            return JSONResponse({"detail": problem}, status_code=422)
        try:
            grant = await run_in_threadpool(node.answer, payload)
        except MalformedRequest as err:
            return JSONResponse({"detail": str(err)}, status_code=422)
        except Refused as refusal:
            return JSONResponse({"detail": refusal.reason}, status_code=403)
        except DBAPIError as err:
            if not is_disconnect(err):
                raise
            return JSONResponse({"detail": "the ledger's database is unreachable; retry"}, status_code=503)
        return JSONResponse(grant.model_dump(mode="json"))

    return app


__all__ = ["MAX_BODY_BYTES", "create_app"]
