"""Storage against a real, authenticated SeaweedFS: presigned upload integrity, expiry, and clear errors.

What SeaweedFS 4.48 does with checksums (measured, and pinned by these tests):
- any ``x-amz-*`` header a presigned URL did not sign is refused (403 SignatureDoesNotMatch), so a
  miner cannot attach a checksum of its choosing to a URL minted before its output existed;
- a URL that signs ``x-amz-sdk-checksum-algorithm: SHA256`` makes the service hash the received bytes
  itself and keep that sha256; HEAD with ``ChecksumMode=ENABLED`` returns it;
- a URL that signs ``x-amz-checksum-sha256: <value>`` makes the service verify the body (400 BadDigest).
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa
from pydantic import SecretStr

from heurist.errors import ConfigError, StorageError
from heurist.settings import Settings
from heurist.storage import make_store
from heurist.storage.backends.s3 import S3ObjectStore, checksum_to_hex, sha256_b64
from heurist.storage.presigned import UploadRefusedError, put_presigned, signed_headers
from heurist.storage.seaweed import SeaweedServer, free_ports

PNG = b"\x89PNG\r\n\x1a\n" + os.urandom(2048)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_presigned_put_then_head_gives_sha256_size_and_type(object_store: S3ObjectStore) -> None:
    url = object_store.presign_put("outputs/a.png", 60)
    assert "x-amz-sdk-checksum-algorithm" in signed_headers(url)

    digest = put_presigned(url, PNG, "image/png")

    info = object_store.stat("outputs/a.png")
    assert digest == sha(PNG)
    assert info is not None
    assert (info.size, info.content_type, info.sha256) == (len(PNG), "image/png", sha(PNG))


def test_the_stored_sha256_is_the_services_not_the_miners(object_store: S3ObjectStore) -> None:
    """A miner uploading other bytes than it claims is caught by the ledger's HEAD, without a GET."""
    claimed = sha(PNG)
    put_presigned(object_store.presign_put("k", 60), b"cheaper output", "image/png")

    info = object_store.stat("k")
    assert info is not None and info.sha256 is not None  # kept by SeaweedFS: no GET+hash fallback needed
    assert info.sha256 == sha(b"cheaper output") != claimed
    assert object_store.sha256_of("k") == info.sha256


def test_a_checksum_header_the_url_did_not_sign_is_refused(object_store: S3ObjectStore) -> None:
    url = object_store.presign_put("k", 60)
    forged = {"Content-Type": "image/png", "x-amz-sdk-checksum-algorithm": "SHA256",
              "x-amz-checksum-sha256": sha256_b64(PNG)}

    resp = requests.put(url, data=b"not the png", headers=forged, timeout=10)

    assert resp.status_code == 403, resp.text
    assert object_store.stat("k") is None


def test_a_body_not_matching_a_signed_checksum_is_refused(object_store: S3ObjectStore) -> None:
    url = object_store.presign_put("k", 60, sha256=sha(PNG))
    headers = {"Content-Type": "image/png", "x-amz-checksum-sha256": sha256_b64(PNG)}

    resp = requests.put(url, data=PNG[:-1] + b"!", headers=headers, timeout=10)
    assert resp.status_code == 400 and "BadDigest" in resp.text, resp.text
    with pytest.raises(UploadRefusedError):
        put_presigned(url, b"other bytes", "image/png")
    assert object_store.stat("k") is None

    assert put_presigned(url, PNG, "image/png") == sha(PNG)
    info = object_store.stat("k")
    assert info is not None and info.sha256 == sha(PNG)


def _aws_chunked(body: bytes, trailer: bytes) -> bytes:
    return b"%x\r\n" % len(body) + body + b"\r\n0\r\n" + trailer + b"\r\n\r\n"


@pytest.mark.parametrize("extra", [
    {"x-amz-content-sha256": "STREAMING-UNSIGNED-PAYLOAD-TRAILER", "Content-Encoding": "aws-chunked"},
    {"x-amz-content-sha256": "STREAMING-UNSIGNED-PAYLOAD-TRAILER", "Content-Encoding": "aws-chunked",
     "x-amz-trailer": "x-amz-checksum-sha256", "x-amz-decoded-content-length": "4"},
    {"x-amz-content-sha256": sha(PNG)},
])
def test_a_miner_cannot_make_the_service_keep_a_forged_sha256(object_store: S3ObjectStore,
                                                              extra: dict[str, str]) -> None:
    """Streaming-trailer tricks either fail or leave the true sha256 of the stored bytes."""
    url = object_store.presign_put("k", 60)
    trailer = b"x-amz-checksum-sha256:" + sha256_b64(PNG).encode()
    body = _aws_chunked(b"evil", trailer) if "Content-Encoding" in extra else b"evil"

    headers = {"x-amz-sdk-checksum-algorithm": "SHA256", **extra}
    resp = requests.put(url, data=body, headers=headers, timeout=10)

    info = object_store.stat("k")
    if resp.status_code >= 400:
        assert info is None
    else:
        assert info is not None and info.sha256 == sha(object_store.get("k")) != sha(PNG)


def test_presigned_get_returns_the_bytes(object_store: S3ObjectStore) -> None:
    object_store.put("out.png", PNG, "image/png")

    resp = requests.get(object_store.presign_get("out.png", 60), timeout=10)

    assert resp.status_code == 200
    assert resp.content == PNG


def test_expired_presigned_urls_are_refused(object_store: S3ObjectStore) -> None:
    object_store.put("old.png", PNG, "image/png")
    put_url = object_store.presign_put("late.png", 1)
    get_url = object_store.presign_get("old.png", 1)

    time.sleep(2.1)  # X-Amz-Date has one-second resolution

    with pytest.raises(UploadRefusedError, match="403"):
        put_presigned(put_url, PNG, "image/png")
    assert requests.get(get_url, timeout=10).status_code == 403
    assert object_store.stat("late.png") is None


def test_ensure_bucket_is_idempotent(object_store: S3ObjectStore, s3_settings: Settings) -> None:
    object_store.ensure_bucket()
    S3ObjectStore.from_settings(s3_settings).ensure_bucket()

    object_store.put("k", b"x", "text/plain")
    assert object_store.get("k") == b"x"


def test_trusted_put_keeps_a_verified_sha256(object_store: S3ObjectStore) -> None:
    object_store.put("k", b"hello", "text/plain")

    info = object_store.stat("k")
    assert info is not None and info.sha256 == sha(b"hello")
    assert object_store.stat("missing") is None
    assert object_store.sha256_of("missing") is None
    with pytest.raises(StorageError, match="no object"):
        object_store.get("missing")


@pytest.mark.parametrize(("field", "named"), [
    ("s3_secret_key", "HEURIST_S3_SECRET_KEY"),
    ("s3_access_key", "HEURIST_S3_ACCESS_KEY"),
])
def test_wrong_credentials_name_the_setting(object_store: S3ObjectStore, s3_settings: Settings,
                                            field: str, named: str) -> None:
    wrong = make_store(s3_settings.model_copy(update={field: SecretStr("wrong")}))

    for call in (wrong.ensure_bucket, lambda: wrong.put("k", b"x", "text/plain"), lambda: wrong.stat("k")):
        with pytest.raises(StorageError, match=named) as err:
            call()
        assert "refused our credentials" in str(err.value)
        assert "Traceback" not in str(err.value)


def test_unreachable_endpoint_names_the_setting() -> None:
    (port,) = free_ports(1)
    store = S3ObjectStore(f"http://127.0.0.1:{port}", "k", "s", "bucket", max_attempts=1)

    started = time.monotonic()
    with pytest.raises(StorageError, match="HEURIST_S3_ENDPOINT") as err:
        store.ensure_bucket()
    assert "cannot reach" in str(err.value)
    assert time.monotonic() - started < 5


def test_missing_or_malformed_endpoint_is_a_config_error(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path)  # type: ignore[call-arg]
    with pytest.raises(ConfigError, match="HEURIST_S3_ENDPOINT"):
        make_store(settings.model_copy(update={"s3_endpoint": None}))
    with pytest.raises(ConfigError, match="HEURIST_S3_ENDPOINT"):
        make_store(settings.model_copy(update={"s3_endpoint": "not a url"}))


def test_checksum_to_hex() -> None:
    assert checksum_to_hex(sha256_b64(b"a")) == sha(b"a")
    assert checksum_to_hex(sha256_b64(b"a") + "-3") is None  # multipart composite
    assert checksum_to_hex(None) is None
    assert checksum_to_hex("AAAA") is None  # not 32 bytes


def test_seaweed_stops_cleanly(tmp_path: Path) -> None:
    """Its own server: stop() ends the whole process group and leaves no sockets in /tmp."""
    server = SeaweedServer(tmp_path / "s3", stop_grace_s=0.5).start()
    assert server.log_path.exists()
    pid, ports = server._proc.pid if server._proc else -1, dict(server.ports)
    assert requests.get(server.endpoint, timeout=5).status_code == 403  # authenticated: anonymous refused

    server.stop()

    assert not server.running
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)
    assert not [p for port in ports.values() for p in Path("/tmp").glob(f"seaweedfs-*-{port}.sock")]


def test_objects_survive_a_stop_and_restart(tmp_path: Path) -> None:
    """stop() SIGKILLs weed after a short grace (its graceful stop only waits on itself): what a PUT stored
    is still there when the same data dir starts again (``heurist up --keep`` and ``heurist demo`` rely on it)."""
    port = free_ports(1)[0]
    server = SeaweedServer(tmp_path / "s3", s3_port=port).start()  # the default grace
    settings = Settings(_env_file=None, s3_endpoint=server.endpoint, s3_access_key=server.access_key,  # type: ignore[call-arg, arg-type]
                        s3_secret_key=server.secret_key, s3_bucket="kept")  # type: ignore[arg-type]
    store = S3ObjectStore.from_settings(settings)
    store.ensure_bucket()
    put_presigned(store.presign_put("outputs/kept.png", 60), PNG, "image/png")
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 3

    server.start()
    try:
        assert store.get("outputs/kept.png") == PNG
        assert store.sha256_of("outputs/kept.png") == sha(PNG)
    finally:
        server.stop()


def test_db_fixtures_answer_select_1(db_url: str) -> None:
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("select 1")).scalar_one() == 1
            assert conn.dialect.name == ("sqlite" if db_url.startswith("sqlite") else "postgresql")
    finally:
        engine.dispose()


@pytest.mark.parametrize(("keys", "named"), [
    ({}, "HEURIST_S3_ACCESS_KEY and HEURIST_S3_SECRET_KEY not set"),
    ({"s3_access_key": "k"}, "HEURIST_S3_SECRET_KEY not set"),
    ({"s3_secret_key": "s", "s3_access_key": ""}, "HEURIST_S3_ACCESS_KEY not set"),
])
def test_an_endpoint_without_keys_is_a_config_error(tmp_path: Path, keys: dict[str, str], named: str) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path, s3_endpoint="http://127.0.0.1:8333", **keys)  # type: ignore[call-arg, arg-type]
    with pytest.raises(ConfigError, match=named):
        make_store(settings)
