"""Object storage: the ObjectStore interface, the S3 backend, the miner's presigned upload, local SeaweedFS.

Importing this package is cheap (no boto3): miners import ``heurist.storage.presigned`` through it, and
the S3 backend and SeaweedServer load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from heurist.storage.backend import ObjectInfo, ObjectStore

if TYPE_CHECKING:
    from heurist.settings import Settings
    from heurist.storage.backends.s3 import S3ObjectStore
    from heurist.storage.presigned import put_presigned
    from heurist.storage.seaweed import SeaweedServer

__all__ = ["ObjectInfo", "ObjectStore", "S3ObjectStore", "SeaweedServer", "make_store", "put_presigned"]

_LAZY = {
    "S3ObjectStore": "heurist.storage.backends.s3",
    "SeaweedServer": "heurist.storage.seaweed",
    "put_presigned": "heurist.storage.presigned",
}


def make_store(settings: Settings) -> ObjectStore:
    """The object store the settings name; ConfigError if HEURIST_S3_ENDPOINT is unset."""
    from heurist.storage.backends.s3 import S3ObjectStore

    return S3ObjectStore.from_settings(settings)


def __getattr__(name: str) -> Any:
    """Load the heavier members on first access (PEP 562)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
