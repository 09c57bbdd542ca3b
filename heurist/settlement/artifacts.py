"""The compiled contracts: shipped JSON artifacts, and the check that they are what their Vyper sources compile to.

Why ship artifacts at all. Deploying and calling need only an ABI and bytecode, and a node operator or a CI job
should not need a compiler for that; but a shipped blob nobody can tie to its source is a trust problem. So each
``heurist/settlement/build/<Name>.json`` (package data: an installed image has it) holds ``{"abi", "bytecode",
"source_sha256"}``, and ``stale()`` recompiles the sources (contracts/*.vy, in a checkout) in-process with the
pinned compiler (vyper 0.4.3, the ``chain`` extra) and names every artifact whose source hash or bytecode differs.
Vyper's output here does not depend on the file's path (checked), so the same source gives the same bytes on any
machine. Compiling the three takes about 1 s of CPU here (0.3-0.4 s each),
so results are cached per source text within a process.

``python -m heurist.settlement.artifacts`` rewrites the artifacts after a source changes;
``heurist contracts check`` and tests/test_contracts.py fail while one is stale.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from heurist.errors import ConfigError

CONTRACTS = ("HUE", "esHUE", "RewardsDistributor")
CONTRACTS_DIR = Path(__file__).resolve().parents[2] / "contracts"  # the sources: in a checkout only
BUILD_DIR = Path(__file__).resolve().parent / "build"  # package data: an installed image deploys from it
REGENERATE = "python -m heurist.settlement.artifacts"


@dataclass(frozen=True)
class Artifact:
    """What deploying and calling a contract take: its ABI and its creation bytecode (0x hex)."""

    abi: list[dict[str, Any]]
    bytecode: str


def _known(name: str) -> str:
    if name not in CONTRACTS:
        raise ConfigError(f"contract {name!r} is not one of heurist's contracts: give one of {', '.join(CONTRACTS)}")
    return name


def source_path(name: str, source_dir: Path = CONTRACTS_DIR) -> Path:
    path = source_dir / f"{_known(name)}.vy"
    if not path.is_file():  # an installed package ships the artifacts, not the sources
        raise ConfigError(f"contract source {path} is not here: check the artifacts in a checkout of the "
                          "repository (git clone, then `heurist contracts check` there)")
    return path


def artifact_path(name: str, build_dir: Path = BUILD_DIR) -> Path:
    return build_dir / f"{_known(name)}.json"


def _read(name: str, build_dir: Path) -> dict[str, Any]:
    path = artifact_path(name, build_dir)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"contract artifact {path} is missing: run `{REGENERATE}` in the repository") from None
    except (OSError, ValueError) as e:
        raise ConfigError(f"contract artifact {path} is unreadable ({e}): run `{REGENERATE}` to rewrite it") from None
    if not isinstance(data, dict) or not isinstance(data.get("abi"), list) or not isinstance(data.get("bytecode"), str):
        raise ConfigError(f"contract artifact {path} lacks an abi list or a bytecode string: run `{REGENERATE}`")
    return data


def load(name: str, build_dir: Path = BUILD_DIR) -> Artifact:
    """The shipped artifact of contract ``name`` (one of CONTRACTS); ConfigError naming the fix if it is missing."""
    data = _read(name, build_dir)
    return Artifact(abi=data["abi"], bytecode=data["bytecode"])


def sha256_of(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as e:
        raise ConfigError(f"contract source {path} is unreadable ({e}): restore it from the repository") from None


def compile_source(path: Path) -> dict[str, Any]:
    """Compile one Vyper source in-process: the artifact dict ``{"abi", "bytecode", "source_sha256"}``."""
    path = Path(path)
    digest = sha256_of(path)
    abi, bytecode = _compile(path.read_text(), path.name)
    return {"abi": json.loads(abi), "bytecode": bytecode, "source_sha256": digest}


@lru_cache(maxsize=16)
def _compile(source: str, filename: str) -> tuple[str, str]:
    """(abi JSON, bytecode) of ``source``; cached, as the output is a function of the text (0.7 s a contract)."""
    import vyper  # the `chain` extra; imported here so loading artifacts does not need the compiler
    from vyper.exceptions import VyperException

    try:
        out = vyper.compile_code(source, contract_path=filename, output_formats=["abi", "bytecode"])
    except VyperException as e:
        raise ConfigError(f"contract source {filename} does not compile with vyper {vyper.__version__}: {e}") from None
    return json.dumps(out["abi"]), out["bytecode"]


def stale(source_dir: Path = CONTRACTS_DIR, build_dir: Path = BUILD_DIR) -> list[str]:
    """The contracts whose shipped artifact is missing or differs from its source (hash, or recompiled code)."""
    found = []
    for name in CONTRACTS:
        source = source_path(name, source_dir)
        try:
            shipped = _read(name, build_dir)
        except ConfigError:
            found.append(name)
            continue
        if shipped.get("source_sha256") != sha256_of(source):
            found.append(name)
            continue
        built = compile_source(source)
        if built["bytecode"] != shipped["bytecode"] or built["abi"] != shipped["abi"]:
            found.append(name)
    return found


def write(source_dir: Path = CONTRACTS_DIR, build_dir: Path = BUILD_DIR) -> list[Path]:
    """Compile every contract and write its artifact; the paths written."""
    build_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in CONTRACTS:
        path = artifact_path(name, build_dir)
        path.write_text(json.dumps(compile_source(source_path(name, source_dir)), indent=1) + "\n")
        written.append(path)
    return written


def main() -> int:
    try:
        for path in write():
            print(f"wrote {path}")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
