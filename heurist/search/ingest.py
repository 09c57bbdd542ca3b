"""Documents from files: a .md/.txt file or a directory of them, titled by their first heading."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from heurist.errors import HeuristError

SUFFIXES = (".md", ".txt")
DEMO_CORPUS = Path(__file__).resolve().parent / "corpus"


class IngestError(HeuristError):
    """A path that cannot be ingested: missing, empty, or holding no .md/.txt file."""


@dataclass(frozen=True)
class SourceDocument:
    title: str
    text: str
    source: str


def title_of(text: str, fallback: str) -> str:
    """The first Markdown heading, else the first non-empty line if it is short, else ``fallback``."""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            return stripped.lstrip("#").strip() or fallback
        if stripped:
            break
    return fallback


def read_document(path: Path) -> SourceDocument:
    text = path.read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        raise IngestError(f"{path} is empty")
    title = title_of(text, path.stem.replace("_", " ").replace("-", " "))
    plain = re.sub(r"^#+\s*", "", text, flags=re.MULTILINE)  # headings stay as text, without the markup
    return SourceDocument(title, plain, str(path))


def collect(path: Path) -> list[Path]:
    """The files to ingest under ``path``, sorted; errors say what is wrong with the path."""
    if not path.exists():
        raise IngestError(f"no such file or directory: {path}")
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
    if not files:
        raise IngestError(f"{path} holds no {' or '.join(SUFFIXES)} files")
    return files


def demo_documents() -> list[SourceDocument]:
    """The shipped corpus about the Heurist network itself."""
    return [read_document(p) for p in collect(DEMO_CORPUS)]
