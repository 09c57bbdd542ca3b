"""The catalog lock: sha256 of model files the catalog cannot pin itself.

Models built on this machine (tiny-sd) and hub models whose hashes are not published yet (pinned by the
operator) are recorded in ``<models_dir>/catalog.lock.json`` as ``{model_id: {relative_path: sha256}}``.
A miner verifies those files against the lock before loading them, exactly as it does against the
catalog's ``files``. The lock only guards against corruption and accidental change: whoever can write the
models directory can rewrite it. Torch-free, so the CLI and the ledger can read it.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: no cross-process guard
    fcntl = None  # type: ignore[assignment]

from heurist.catalog.schema import SHA256_RE
from heurist.errors import ModelIntegrityError

LOCK_FILE = "catalog.lock.json"


def lock_path(models_dir: Path) -> Path:
    """Where the lock of ``models_dir`` lives."""
    return Path(models_dir) / LOCK_FILE


def _invalid(path: Path, why: str) -> ModelIntegrityError:
    return ModelIntegrityError(
        f"catalog lock {path} is invalid ({why}): delete it, then rebuild built models "
        "(`heurist models build tiny-sd`) and re-pin operator-pinned ones"
    )


def _validated(path: Path, data: object) -> dict[str, dict[str, str]]:
    if not isinstance(data, dict):
        raise _invalid(path, "not a JSON object")
    lock: dict[str, dict[str, str]] = {}
    for model_id, files in data.items():
        if not isinstance(files, dict) or not files:
            raise _invalid(path, f"entry {model_id!r} must be a non-empty object of path -> sha256")
        for rel, digest in files.items():
            if not isinstance(digest, str) or not SHA256_RE.match(digest):
                raise _invalid(path, f"{model_id}/{rel}: sha256 must be 64 lowercase hex digits")
        lock[str(model_id)] = dict(files)
    return lock


def read_lock(models_dir: Path) -> dict[str, dict[str, str]]:
    """Every model recorded in the lock, ``{model_id: {relative_path: sha256}}``; empty if there is none."""
    path = lock_path(models_dir)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise _invalid(path, f"not JSON: {err.msg} at line {err.lineno}") from None
    return _validated(path, data)


@contextmanager
def _exclusive(models_dir: Path) -> Iterator[None]:
    """Serialise read-modify-write of the lock between processes (miners may share a models dir)."""
    guard = Path(models_dir) / f".{LOCK_FILE}.guard"
    with open(guard, "a") as handle:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def record_hashes(models_dir: Path, model_id: str, hashes: dict[str, str]) -> Path:
    """Record (replace) ``model_id``'s file hashes in the lock; written atomically. Returns the lock path."""
    path = lock_path(models_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(models_dir):
        lock = read_lock(models_dir)
        lock[model_id] = dict(sorted(hashes.items()))
        _validated(path, lock)
        _write_atomically(path, lock)
    return path


def _write_atomically(path: Path, lock: dict[str, dict[str, str]]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".catalog.lock.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(lock, out, indent=2, sort_keys=True)
            out.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
