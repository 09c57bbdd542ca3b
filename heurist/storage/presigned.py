"""The miner's side of storage: PUT bytes to a presigned URL. Plain HTTP, no keys, no boto3.

S3 refuses any ``x-amz-*`` header the URL did not sign, so the headers sent are the ones the URL
asks for (its ``X-Amz-SignedHeaders``): ``x-amz-sdk-checksum-algorithm: SHA256`` (the service hashes
the bytes and keeps the sha256 for the ledger) and/or ``x-amz-checksum-sha256`` (the service verifies
the body against it). Imports nothing heavy until an upload happens.
"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

from heurist.errors import StorageError

if TYPE_CHECKING:
    import requests

UPLOAD_ATTEMPTS = 4
TIMEOUT_S = (5.0, 120.0)  # connect, read
_RETRY_STATUS = {500, 502, 503, 504}


class UploadRefusedError(StorageError):
    """The storage service answered 4xx: the URL expired, is for other content, or was tampered with."""


class _TransientUploadError(Exception):
    """A 5xx answer worth another try."""


def signed_headers(url: str) -> set[str]:
    """The header names a SigV4 presigned URL signed (lower case); empty for other URLs."""
    query = parse_qs(urlsplit(url).query)
    values = query.get("X-Amz-SignedHeaders", [""])
    return {h.strip().lower() for h in values[0].split(";") if h.strip()}


def upload_headers(url: str, data: bytes, content_type: str) -> dict[str, str]:
    """The headers a PUT of ``data`` to ``url`` must carry."""
    headers = {"Content-Type": content_type}
    signed = signed_headers(url)
    if "x-amz-sdk-checksum-algorithm" in signed:
        headers["x-amz-sdk-checksum-algorithm"] = "SHA256"
    if "x-amz-checksum-sha256" in signed:
        headers["x-amz-checksum-sha256"] = base64.b64encode(hashlib.sha256(data).digest()).decode()
    return headers


def put_presigned(url: str, data: bytes, content_type: str, session: requests.Session | None = None) -> str:
    """Upload ``data`` and return its sha256 (hex), the value the miner signs in its completion.

    Connection errors and 5xx answers are retried a few times (a PUT of the same bytes is idempotent);
    a 4xx raises UploadRefusedError at once.
    """
    import requests
    from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

    headers = upload_headers(url, data, content_type)
    http = session or requests.Session()
    retrying = Retrying(
        retry=retry_if_exception_type((requests.ConnectionError, requests.Timeout, _TransientUploadError)),
        stop=stop_after_attempt(UPLOAD_ATTEMPTS), wait=wait_exponential(multiplier=0.2, max=2.0),
        reraise=True,
    )
    try:
        for attempt in retrying:
            with attempt:
                _put_once(http, url, data, headers)
    except (requests.RequestException, _TransientUploadError) as exc:
        raise StorageError(f"upload to {_where(url)} failed after {UPLOAD_ATTEMPTS} attempts: {exc}") from exc
    finally:
        if session is None:
            http.close()
    return hashlib.sha256(data).hexdigest()


def _put_once(http: requests.Session, url: str, data: bytes, headers: dict[str, str]) -> None:
    resp = http.put(url, data=data, headers=headers, timeout=TIMEOUT_S)
    if resp.status_code in _RETRY_STATUS:
        raise _TransientUploadError(f"HTTP {resp.status_code}: {_s3_error(resp.text)}")
    if resp.status_code >= 400:
        raise UploadRefusedError(
            f"storage refused the upload to {_where(url)}: HTTP {resp.status_code} {_s3_error(resp.text)} "
            "(an expired URL, or a URL signed for other content; ask for a new job)")


def _where(url: str) -> str:
    """The URL without its query string: the signature is a bearer credential, keep it out of logs."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def _s3_error(body: str) -> str:
    """``Code: Message`` from an S3 XML error body, else its first 200 characters."""
    code = re.search(r"<Code>(.*?)</Code>", body)
    message = re.search(r"<Message>(.*?)</Message>", body)
    if code:
        return f"{code.group(1)}: {message.group(1) if message else ''}".strip()
    return body[:200]
