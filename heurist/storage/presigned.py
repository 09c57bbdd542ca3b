"""The miner's side of storage: PUT bytes to a presigned URL. Plain HTTP, no keys, no boto3.

S3 refuses any ``x-amz-*`` header the URL did not sign, so the headers sent are the ones the URL
asks for (its ``X-Amz-SignedHeaders``): ``x-amz-sdk-checksum-algorithm: SHA256`` (the service hashes
the bytes and keeps the sha256 for the ledger) and/or ``x-amz-checksum-sha256`` (the service verifies
the body against it). Imports nothing heavy until an upload happens.

**The retry window is the job's time, not a count.** A connection error or a 5xx is retried with capped
exponential back-off (0.2 s doubling to 5 s, plus up to 0.2 s of jitter) until ``deadline_at`` less
``DEADLINE_MARGIN_S``: the URL expires at the deadline (``heurist.dispatch.upload_expiry_s``), so a later try
could only be refused. It used to be 4 tries over 1.4 s, and a SeaweedFS that was back 13 s after a crash
failed 7 of 40 jobs (issue 14); a job that finished 40 s before its deadline now rides out a 40 s outage.
Each try's timeouts end with the window too, so the upload is over by the deadline, before the job's hard
time limit. A 4xx still fails at once: the URL expired or is for other content, and no retry changes that.
The error names the store, the tries and the seconds, never the URL's signature: "upload to
http://…/outputs/x.png failed after 9 attempts over 40.2 s (ConnectionError)".
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

from heurist.errors import StorageError

if TYPE_CHECKING:
    import requests

CONNECT_TIMEOUT_S, READ_TIMEOUT_S = 5.0, 120.0  # per try, and never beyond the window (MIN_TIMEOUT_S at least)
MIN_TIMEOUT_S = 0.5
DEADLINE_MARGIN_S = 1.0  # the URL's expiry is whole seconds at or before the deadline: stop trying this early
DEFAULT_WINDOW_S = 30.0  # without a deadline (trusted tools, tests): how long to keep trying
BACKOFF_FIRST_S, BACKOFF_MAX_S, BACKOFF_JITTER_S = 0.2, 5.0, 0.2
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


def put_presigned(url: str, data: bytes, content_type: str, session: requests.Session | None = None, *,
                  deadline_at: float | None = None) -> str:
    """Upload ``data`` and return its sha256 (hex), the value the miner signs in its completion.

    Connection errors and 5xx answers are retried (a PUT of the same bytes is idempotent) until ``deadline_at``
    (unix seconds) less ``DEADLINE_MARGIN_S``, or for ``DEFAULT_WINDOW_S`` without one; then StorageError. A 4xx
    raises UploadRefusedError at once.
    """
    import requests
    from tenacity import RetryCallState, Retrying, retry_if_exception_type, wait_exponential, wait_random

    headers = upload_headers(url, data, content_type)
    http = session or requests.Session()
    started = time.monotonic()
    window_s = DEFAULT_WINDOW_S if deadline_at is None else deadline_at - DEADLINE_MARGIN_S - time.time()
    ends = started + window_s
    backoff = wait_exponential(multiplier=BACKOFF_FIRST_S, max=BACKOFF_MAX_S) + wait_random(0, BACKOFF_JITTER_S)

    def wait(state: RetryCallState) -> float:  # the last pause ends with the window: one last try there
        return max(0.0, min(backoff(state), ends - time.monotonic()))

    tries = 0
    retrying = Retrying(
        retry=retry_if_exception_type((requests.ConnectionError, requests.Timeout, _TransientUploadError)),
        stop=lambda state: time.monotonic() >= ends, wait=wait, reraise=True,
    )
    try:
        for attempt in retrying:
            with attempt:
                tries = attempt.retry_state.attempt_number
                left = ends - time.monotonic()  # a try started late ends by the deadline, within the hard limit
                _put_once(http, url, data, headers, (max(MIN_TIMEOUT_S, min(CONNECT_TIMEOUT_S, left)),
                                                     max(MIN_TIMEOUT_S, min(READ_TIMEOUT_S, left))))
    except (requests.RequestException, _TransientUploadError) as exc:
        raise StorageError(f"upload to {_where(url)} failed after {tries} attempt{'' if tries == 1 else 's'} over "
                           f"{time.monotonic() - started:.1f} s ({_describe(exc)})") from exc
    finally:
        if session is None:
            http.close()
    return hashlib.sha256(data).hexdigest()


def _put_once(http: requests.Session, url: str, data: bytes, headers: dict[str, str],
              timeout: tuple[float, float]) -> None:
    resp = http.put(url, data=data, headers=headers, timeout=timeout)
    if resp.status_code in _RETRY_STATUS:
        raise _TransientUploadError(f"HTTP {resp.status_code}: {_s3_error(resp.text)}")
    if resp.status_code >= 400:
        raise UploadRefusedError(
            f"storage refused the upload to {_where(url)}: HTTP {resp.status_code} {_s3_error(resp.text)} "
            "(an expired URL, or a URL signed for other content; ask for a new job)")


def _describe(exc: BaseException) -> str:
    """The last try's failure, short and without the URL: "ConnectionError", "HTTP 503: SlowDown: …"."""
    if isinstance(exc, _TransientUploadError):
        return str(exc)[:80]
    return type(exc).__name__


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
