"""A key-release node's X25519 key: one 0600 file of 64 hex digits per node, made once by ``heurist keyrelease
init``.

Each node has its own key and its own file (``data_dir/keyrelease-<index>.key``, or
``HEURIST_KEYRELEASE_KEY_FILE``): whoever reads t of the n files can open every private job's shares, so
a file readable by group or others is refused, not used. The file is written to a 0600 temporary file and
linked into place, so two ``init`` at once leave one key, never a half-written or replaced one (the pattern of
``heurist.dispatch``). Losing a node's key loses that node's shares: jobs still open with t of the others.
"""

from __future__ import annotations

from pathlib import Path

from nacl.public import PrivateKey

from heurist.errors import ConfigError
from heurist.secret_files import ensure_secret, read_secret
from heurist.settings import Settings

KEY_BYTES = 32


def key_path(settings: Settings, index: int) -> Path:
    """Where node ``index``'s key lives."""
    if settings.keyrelease_key_file:
        return Path(settings.keyrelease_key_file)
    return settings.data_dir / f"keyrelease-{index}.key"


def init_key(path: Path, index: int | None = None) -> PrivateKey:
    """The key in ``path``, created (0600, atomically) if the file is missing."""
    ensure_secret(path, lambda: bytes(PrivateKey.generate()).hex(), "key-release key file")
    return load_key(path, index)


def load_key(path: Path, index: int | None = None) -> PrivateKey:
    """The key in ``path``; ``ConfigError`` saying how to fix a missing, exposed or malformed file."""
    init = f"heurist keyrelease init --index {index if index is not None else 'I'}"
    try:
        text = read_secret(path, "key-release key file")
    except FileNotFoundError:
        raise ConfigError(f"key-release key file {path} does not exist: run `{init}`") from None
    try:
        raw = bytes.fromhex(text.strip())
    except ValueError:
        raw = b""
    if len(raw) != KEY_BYTES:
        raise ConfigError(f"key-release key file {path} does not hold a 64-hex-digit X25519 key; move it away "
                          f"and run `{init}` (the client must then be given the node's new public key)")
    return PrivateKey(raw)


__all__ = ["init_key", "key_path", "load_key"]
