"""``FastS3ObjectStore`` (hand-signed HEAD, conditional COPY, GET and PUT) answers exactly as the boto3 store does,
on a real SeaweedFS: the same object info, copies, bytes, and the same errors for what is missing or refused."""

from __future__ import annotations

import hashlib

import pytest

from heurist.errors import StorageError
from heurist.settings import Settings
from heurist.storage.backends.s3 import S3ObjectStore
from heurist.storage.backends.s3_fast import FastS3ObjectStore
from heurist.storage.seaweed import SeaweedServer, free_ports

KEYS = ["outputs/sd15/0b3c.png", "outputs/a b/ü+=&?#%;,.png", "k~y(1)*!'[x]"]


@pytest.fixture
def fast(object_store: S3ObjectStore, s3_settings: Settings) -> FastS3ObjectStore:
    return FastS3ObjectStore.from_settings(s3_settings)


@pytest.mark.parametrize("key", KEYS)
def test_head_copy_and_get_answer_as_boto3_does(object_store: S3ObjectStore, fast: FastS3ObjectStore,
                                                key: str) -> None:
    data = b"\x89PNG pretend" * 100
    object_store.put(key, data, "image/png")
    info = object_store.stat(key)
    assert info is not None and info.sha256 is not None and info.etag is not None
    assert fast.stat(key) == info
    assert fast.get(key) == object_store.get(key) == data
    assert fast.copy(key, f"frozen/fast/{key}", if_match=info.etag) == object_store.copy(
        key, f"frozen/boto/{key}", if_match=info.etag) == info.etag
    assert object_store.get(f"frozen/fast/{key}") == data
    assert fast.stat(f"frozen/fast/{key}") == object_store.stat(f"frozen/fast/{key}")
    assert fast.copy(key, "frozen/other", if_match="0" * 32) is None  # the bytes changed since the HEAD
    assert object_store.copy(key, "frozen/other", if_match="0" * 32) is None


@pytest.mark.parametrize("key", KEYS)
def test_put_stores_what_boto3_stores(object_store: S3ObjectStore, fast: FastS3ObjectStore, key: str) -> None:
    """An inline output's frozen copy (``heurist.storage.freeze.freeze_bytes``): the same bytes, and the sha256 the
    service verified and kept, whichever store wrote them."""
    data = b'{"text": "\u00e9t\u00e9", "ids": [1, 2]}' * 300
    fast.put(f"frozen/fast/{key}", data, "application/json")
    object_store.put(f"frozen/boto/{key}", data, "application/json")
    by_fast, by_boto = object_store.stat(f"frozen/fast/{key}"), object_store.stat(f"frozen/boto/{key}")
    assert by_fast is not None and by_boto is not None
    assert (by_fast.sha256, by_fast.size, by_fast.content_type, by_fast.etag) == (
        by_boto.sha256, by_boto.size, by_boto.content_type, by_boto.etag)
    assert by_fast.sha256 == hashlib.sha256(data).hexdigest()
    assert fast.get(f"frozen/fast/{key}") == object_store.get(f"frozen/fast/{key}") == data


def test_missing_objects_and_buckets_answer_as_boto3_does(object_store: S3ObjectStore, fast: FastS3ObjectStore,
                                                          s3_settings: Settings) -> None:
    assert fast.stat("outputs/none") is None and object_store.stat("outputs/none") is None
    errors = []
    for store in (object_store, fast):
        for call in (lambda s=store: s.get("outputs/none"), lambda s=store: s.copy("outputs/none", "frozen/x",
                                                                                   if_match="0" * 32)):
            with pytest.raises(StorageError) as caught:
                call()
            errors.append(str(caught.value))
    assert errors[:2] == errors[2:] and "no object" in errors[0]
    nowhere = s3_settings.model_copy(update={"s3_bucket": "no-such-bucket-here"})
    for store in (S3ObjectStore.from_settings(nowhere), FastS3ObjectStore.from_settings(nowhere)):
        with pytest.raises(StorageError, match="the bucket does not exist"):
            store.get("x")


def test_wrong_keys_and_an_unreachable_service_are_storage_errors(object_store: S3ObjectStore,
                                                                    seaweed: SeaweedServer) -> None:
    object_store.put("outputs/k", b"x", "image/png")
    wrong = FastS3ObjectStore(seaweed.endpoint, seaweed.access_key, "not-the-secret", object_store.bucket)
    for call in (lambda: wrong.stat("outputs/k"), lambda: wrong.get("outputs/k"),
                 lambda: wrong.copy("outputs/k", "frozen/k", if_match="0" * 32),
                 lambda: wrong.put("frozen/k", b"x", "image/png")):
        with pytest.raises(StorageError, match="refused our credentials"):
            call()
    [port] = free_ports(1)
    down = FastS3ObjectStore(f"http://127.0.0.1:{port}", "a", "b", "bucket", max_attempts=2, connect_timeout_s=1)
    with pytest.raises(StorageError, match="cannot reach the S3 service"):
        down.stat("outputs/k")
