"""Say what state a model's files are in (verified, missing, corrupt, unpinned) without loading or building.

``workers.miner.model_files.verify_model_files`` answers "may I load this?" by raising; ``heurist doctor`` needs a
status per model, a byte-count progress while hashing (weights are GB), and must not build a missing
built model as a side effect. Same hashes, same lock, same rules.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path, PurePosixPath

from heurist.catalog.attestation import sha256_file
from heurist.catalog.lock import read_lock
from heurist.catalog.schema import ModelSpec, SourceKind
from heurist.errors import ModelIntegrityError, ModelNotPresentError
from workers.miner.model_files import expected_hashes, model_root

Advance = Callable[[int], object]


class FileState(StrEnum):
    VERIFIED = "verified"  # every pinned file present with its sha256: a miner may load it
    MISSING = "missing"  # not on this machine (or some of its files are not)
    CORRUPT = "corrupt"  # a file's sha256 differs, or a built model has a file its builder did not write
    UNPINNED = "unpinned"  # present, but no published or pinned sha256 to check it against


@dataclass(frozen=True)
class FileStatus:
    state: FileState
    detail: str  # the model's directory when verified, else what is wrong and the fix


@dataclass(frozen=True)
class FileWork:
    """A model located on disk with what its files must hash to, ready to hash."""

    root: Path
    expected: dict[str, str]

    def total_bytes(self) -> int:
        return sum((self.root / rel).stat().st_size for rel in self.expected if (self.root / rel).is_file())


def locate(spec: ModelSpec, models_dir: Path) -> FileWork | FileStatus:
    """Where the model's files are and their expected hashes, or the status that makes hashing moot."""
    if spec.source.kind is SourceKind.BUILD:
        root = Path(models_dir) / spec.id
        if not root.is_dir() or spec.id not in read_lock(models_dir):
            return FileStatus(FileState.MISSING, f"not built in {models_dir}: `heurist models build {spec.id}`")
    try:
        root = model_root(spec, models_dir)
    except ModelNotPresentError as err:
        return FileStatus(FileState.MISSING, str(err))
    try:
        expected = expected_hashes(spec, models_dir)
    except ModelIntegrityError as err:
        return FileStatus(FileState.UNPINNED, str(err))
    return FileWork(root=root, expected=expected)


def _unsafe(rel: str) -> bool:
    path = PurePosixPath(rel)
    return path.is_absolute() or ".." in path.parts or not path.parts


def check_files(spec: ModelSpec, work: FileWork, advance: Advance = lambda _n: None) -> FileStatus:
    """Hash every pinned file (``advance`` gets the bytes read, for a progress bar) and classify the model."""
    for rel, digest in sorted(work.expected.items()):
        path = work.root / rel
        if _unsafe(rel):
            return FileStatus(FileState.CORRUPT, f"pinned path {rel!r} is not inside the model")
        if not path.is_file():
            return FileStatus(FileState.MISSING, f"file {rel} is missing from {work.root}")
        actual = sha256_file(path, advance)
        if actual != digest:
            return FileStatus(FileState.CORRUPT, f"file {rel} has sha256 {actual[:12]}…, expected {digest[:12]}…; "
                              f"a miner refuses it (`heurist models verify --models {spec.id}` says how to fix)")
    extra = _unexpected_files(spec, work.root, work.expected)
    if extra:
        return FileStatus(FileState.CORRUPT, f"unexpected file(s) {', '.join(extra[:3])} in {work.root}")
    return FileStatus(FileState.VERIFIED, str(work.root))


def _unexpected_files(spec: ModelSpec, root: Path, expected: Mapping[str, str]) -> list[str]:
    """A built model's directory is its builder's alone (the rule ``verify_model_files`` applies)."""
    if spec.source.kind is not SourceKind.BUILD or spec.files:
        return []
    present = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    return [rel for rel in present if rel not in expected]
