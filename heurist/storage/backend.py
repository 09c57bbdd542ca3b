"""The object-store interface: what the client, ledger and auditor need of S3-compatible storage.

Miners never see this: they only get per-job presigned URLs (``heurist.storage.presigned``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    content_type: str | None
    sha256: str | None  # hex; from the store's verified checksum, None if it kept none
    etag: str | None = None  # without quotes; what a conditional copy names to copy exactly these bytes
    last_modified: float | None = None  # unix s, the store's own clock, whole seconds (HTTP date, floored)


class ObjectStore(ABC):
    """A bucket in an S3-compatible service."""

    bucket: str

    @abstractmethod
    def ensure_bucket(self) -> None:
        """Create the bucket if it is missing (idempotent)."""

    @abstractmethod
    def presign_put(self, key: str, expires_s: int) -> str:
        """A URL a miner may PUT one object to, with an ``x-amz-checksum-sha256`` header."""

    @abstractmethod
    def presign_get(self, key: str, expires_s: int) -> str:
        """A URL a client may GET the object from."""

    @abstractmethod
    def stat(self, key: str) -> ObjectInfo | None:
        """Size, type and stored sha256 of an object (HEAD with checksum mode), None if absent."""

    @abstractmethod
    def copy(self, source: str, dest: str, *, if_match: str) -> str | None:
        """Server-side copy of ``source`` to ``dest`` only if ``source``'s ETag is still ``if_match``
        (S3 ``x-amz-copy-source-if-match``); the new object's ETag (no quotes), None if the condition failed."""

    @abstractmethod
    def get(self, key: str) -> bytes:
        """The object's bytes."""

    @abstractmethod
    def put(self, key: str, data: bytes, content_type: str) -> None:
        """Store bytes directly (trusted side only: tests, auditor)."""

    def sha256_of(self, key: str) -> str | None:
        """The object's sha256: the store's checksum when kept, else hashed from a GET; None if absent."""
        info = self.stat(key)
        if info is None:
            return None
        if info.sha256 is not None:
            return info.sha256
        import hashlib

        return hashlib.sha256(self.get(key)).hexdigest()
