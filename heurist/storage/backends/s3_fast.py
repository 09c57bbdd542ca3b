"""The S3 backend with its per-completion requests (HEAD, conditional COPY, GET, an inline output's PUT) as plain
signed requests.

Why: after batching its database work (``heurist.ledger.batch``), the ledger spent most of its CPU in boto3. A
HEAD cost 1.19 ms of CPU through boto3 (its event hooks, model-driven serialising and parsing, signer) and 0.27 ms
as one SigV4-signed request on a urllib3 keep-alive pool; a GET 1.00 and 0.31 ms (SeaweedFS, measured here). A
completion makes three of them (``heurist.ledger.verify``): about 2.5 ms of CPU saved of 8 per completion. One
whose output came inline makes a single PUT (``heurist.ledger.inline``).

``FastS3ObjectStore`` is an ``S3ObjectStore`` (boto3 keeps everything else: presigning, buckets) whose
``stat``, ``copy``, ``get`` and ``put`` send the same S3 requests boto3 would, path-style, signed by botocore's
``S3SigV4Auth``, and answer exactly as the boto3 methods do: None for a missing object or a failed copy
condition, the same ``StorageError`` texts otherwise (built by the same code).
Connection errors, 5xx and throttling are retried like boto3's standard mode (3 attempts in all, with jittered
back-off); what is left is a ``StorageError``, which the ledger retries without limit (``heurist.transient``).
``tests/test_fast_s3.py`` runs both side by side on SeaweedFS.
"""

from __future__ import annotations

import random
import re
import time
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote, urlsplit

import urllib3
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from botocore.httpsession import get_cert_path

from heurist.errors import StorageError
from heurist.storage.backend import ObjectInfo
from heurist.storage.backends.s3 import S3ObjectStore, _unquote, checksum_to_hex, sha256_b64

RETRIED = {429, 500, 502, 503, 504}
_XML = re.compile(r"<(Code|Message|ETag)>([^<]*)</\1>")


class SignedRequests:
    """SigV4-signed, path-style requests to one bucket on a keep-alive connection pool (thread-safe)."""

    def __init__(self, endpoint: str, access_key: str, secret_key: str, bucket: str, region: str, *,
                 pool_size: int, max_attempts: int, connect_timeout_s: float, read_timeout_s: float) -> None:
        parts = urlsplit(endpoint)
        self.host, self.prefix = parts.netloc, parts.path.rstrip("/")
        self.bucket = bucket
        self.max_attempts = max_attempts
        tls: dict[str, Any] = {"ca_certs": get_cert_path(True)} if parts.scheme == "https" else {}
        self.pool = urllib3.connection_from_url(
            endpoint, maxsize=pool_size, block=False, retries=False,
            timeout=urllib3.Timeout(connect=connect_timeout_s, read=read_timeout_s), **tls)
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self.auth = S3SigV4Auth(Credentials(access_key, secret_key), "s3", region)

    def path(self, key: str) -> str:
        return f"{self.prefix}/{quote(self.bucket)}/{quote(key, safe='/~')}"

    def send(self, method: str, key: str, headers: dict[str, str] | None = None,
             body: bytes | None = None) -> urllib3.BaseHTTPResponse:
        """The response (any status); urllib3's error after ``max_attempts`` connection failures or 5xx."""
        for attempt in range(1, self.max_attempts + 1):
            try:
                response = self.pool.urlopen(method, self.path(key), body=body,
                                             headers=self._signed(method, key, headers, body),
                                             redirect=False, preload_content=True)
            except urllib3.exceptions.HTTPError:
                if attempt == self.max_attempts:
                    raise
            else:
                if response.status not in RETRIED or attempt == self.max_attempts:
                    return response
            time.sleep(random.random() * min(2.0 ** attempt, 20.0) / 10)  # boto3's standard mode, scaled down
        raise AssertionError("unreachable")

    def _signed(self, method: str, key: str, extra: dict[str, str] | None, body: bytes | None) -> dict[str, str]:
        """The request's headers signed by botocore's own SigV4 signer (0.05 ms of CPU: the cost was boto3's
        client machinery around it, not the signature)."""
        request = AWSRequest(method, f"{self.origin}{self.path(key)}", headers=extra or {}, data=body)
        self.auth.add_auth(request)
        return dict(request.headers.items())


class FastS3ObjectStore(S3ObjectStore):
    """``S3ObjectStore`` whose ``stat``, ``copy``, ``get`` and ``put`` skip boto3 (see the module docstring)."""

    def __init__(self, endpoint: str, access_key: str, secret_key: str, bucket: str, region: str = "us-east-1",
                 *, max_attempts: int = 3, connect_timeout_s: float = 5.0, read_timeout_s: float = 60.0,
                 pool_size: int = 32) -> None:
        super().__init__(endpoint, access_key, secret_key, bucket, region, max_attempts=max_attempts,
                         connect_timeout_s=connect_timeout_s, read_timeout_s=read_timeout_s)
        self.requests = SignedRequests(self.endpoint, access_key, secret_key, bucket, region, pool_size=pool_size,
                                       max_attempts=max_attempts, connect_timeout_s=connect_timeout_s,
                                       read_timeout_s=read_timeout_s)

    def stat(self, key: str) -> ObjectInfo | None:
        response = self._send("HEAD", key, {"x-amz-checksum-mode": "ENABLED"}, f"HEAD {key}")
        if response.status == 404:
            return None
        self._check(response, f"HEAD {key}")
        h = response.headers
        modified = h.get("Last-Modified")
        return ObjectInfo(key=key, size=int(h.get("Content-Length") or 0), content_type=h.get("Content-Type"),
                          sha256=checksum_to_hex(h.get("x-amz-checksum-sha256")), etag=_unquote(h.get("ETag")),
                          last_modified=parsedate_to_datetime(modified).timestamp() if modified else None)

    def copy(self, source: str, dest: str, *, if_match: str) -> str | None:
        action = f"COPY {source} to {dest}"
        response = self._send("PUT", dest, {"x-amz-copy-source": quote(f"{self.bucket}/{source}", safe="/~"),
                                            "x-amz-copy-source-if-match": f'"{if_match}"'}, action)
        if response.status == 412 or _xml(response).get("Code") == "PreconditionFailed":
            return None
        self._check(response, action, error_in_body=True)
        return _unquote(_xml(response).get("ETag")) or ""

    def get(self, key: str) -> bytes:
        response = self._send("GET", key, None, f"GET {key}")
        self._check(response, f"GET {key}")
        return bytes(response.data)

    def put(self, key: str, data: bytes, content_type: str) -> None:
        """As ``S3ObjectStore.put``: the service verifies and keeps our sha256 (an inline output's frozen copy)."""
        response = self._send("PUT", key, {"Content-Type": content_type, "x-amz-checksum-sha256": sha256_b64(data)},
                              f"PUT {key}", data)
        self._check(response, f"PUT {key}")

    def _send(self, method: str, key: str, headers: dict[str, str] | None, action: str,
              body: bytes | None = None) -> urllib3.BaseHTTPResponse:
        try:
            return self.requests.send(method, key, headers, body)
        except urllib3.exceptions.HTTPError as exc:
            raise StorageError(
                f"cannot reach the S3 service at {self.endpoint} ({action}: {exc}): start it (e.g. "
                "`weed server -s3 -s3.port=8333`) or fix HEURIST_S3_ENDPOINT") from exc

    def _check(self, response: urllib3.BaseHTTPResponse, action: str, error_in_body: bool = False) -> None:
        """Raise what boto3's method would for an error response (a COPY can fail with 200 and an error body)."""
        fields = _xml(response) if response.status >= 300 or error_in_body else {}
        if response.status < 300 and "Code" not in fields:
            return
        code = fields.get("Code") or str(response.status)  # a HEAD's error has no body: boto3 names it by status
        error = ClientError({"Error": {"Code": code, "Message": fields.get("Message", "")}}, action.split()[0])
        raise self._client_error(error, action)


def _xml(response: urllib3.BaseHTTPResponse) -> dict[str, str]:
    """The first Code, Message and ETag elements of a small S3 XML body (an error, a copy result)."""
    text = bytes(response.data or b"")[:8192].decode("utf-8", "replace")
    found: dict[str, str] = {}
    for name, value in _XML.findall(text):
        found.setdefault(name, value.replace("&quot;", '"').replace("&amp;", "&"))
    return found


__all__ = ["FastS3ObjectStore", "SignedRequests"]
