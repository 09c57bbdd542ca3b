"""Secret files the trusted side makes on first use: the dispatch key, the client's privacy secret, a key-release
node's key. One way to write them, so every one is created the same safe way.

A secret is written to a ``mkstemp`` file (mode 0600) beside its path, then hard-linked into place: the link is
atomic and refuses to replace a file, so two processes starting together (a ledger and a client, or two clients)
agree on the one secret that landed first. A file that others may read is refused with the ``chmod`` to fix it.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

from heurist.errors import ConfigError


def ensure_secret(path: Path, make: Callable[[], str], what: str) -> str:
    """The text in ``path``, first written there from ``make()`` if the file is missing; ``ConfigError`` if it is
    readable by others. ``what`` names the file in errors ("dispatch key file")."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", dir=path.parent)  # mkstemp: 0600
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(make() + "\n")
            os.link(tmp, path)  # atomic, and refuses to replace a secret another process published first
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    return read_secret(path, what)


def read_secret(path: Path, what: str) -> str:
    """The text of an existing secret file; ``ConfigError`` if it is readable by others."""
    if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"{what} {path} is readable by others: chmod 600 {path}")
    return path.read_text()


__all__ = ["ensure_secret", "read_secret"]
