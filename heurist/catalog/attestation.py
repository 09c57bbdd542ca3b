"""Weight attestation: the sha256 of each model file, and one digest naming the exact files a miner loaded.

A miner signs ``weights_sha256`` in every completion: the sha256 of its model's ``path sha256`` lines,
sorted, as it verified them before loading. The ledger compares it with what the catalog (or, for built
and operator-pinned models, the trusted side's lock) pins, and refuses a completion from modified files.
A miner can lie about its files, so the attestation only catches the honest-but-tampered; the auditor's
replay catches the liar ("a replay mismatch on a miner whose claimed hashes match is still a failure").
Torch-free: the ledger imports it, and so does every side that checks files against pinned hashes (the
miner and auditor before loading, ``heurist doctor``, the search embedder), through the one ``sha256_file``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from pathlib import Path

from heurist.catalog.lock import read_lock
from heurist.catalog.schema import ModelSpec

CHUNK = 1 << 20  # 1 MiB


def sha256_file(path: Path, advance: Callable[[int], object] | None = None) -> str:
    """The sha256 hex digest of a file, read in 1 MiB chunks (weights can be tens of GB); ``advance`` is
    told the bytes of each chunk read (a progress bar)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            if advance is not None:
                advance(len(chunk))
    return digest.hexdigest()


def weights_digest(hashes: Mapping[str, str]) -> str:
    """The attestation of a set of files: sha256 over ``"<relative path> <sha256>\\n"`` lines, sorted."""
    lines = "".join(f"{path} {digest}\n" for path, digest in sorted(hashes.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


class WeightPins:
    """The digest each model's attestation must equal, from the catalog's ``files`` or the local lock.

    Built and operator-pinned models are read from ``<models_dir>/catalog.lock.json`` each time they are
    not known yet (a model may be built after the ledger starts); ``None`` means nothing is pinned here,
    and only the auditor (which loads the model itself) can judge the attestation.
    """

    def __init__(self, models_dir: Path | None) -> None:
        self.models_dir = models_dir
        self._known: dict[str, str] = {}

    def expected(self, spec: ModelSpec) -> str | None:
        if spec.id in self._known:
            return self._known[spec.id]
        hashes = dict(spec.files) or (read_lock(self.models_dir).get(spec.id) if self.models_dir else None)
        if not hashes:
            return None
        self._known[spec.id] = weights_digest(hashes)
        return self._known[spec.id]
