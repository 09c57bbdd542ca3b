"""Split a document into ~500-character chunks on paragraph, then sentence, boundaries.

Chunks that small keep one topic each (a better embedding than a whole page) and fit MiniLM's 256-token
window; a short overlap (the previous chunk's last sentence) keeps a fact cut at a boundary findable.
"""

from __future__ import annotations

import re

TARGET = 500
OVERLAP = 100
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _pieces(text: str, target: int) -> list[str]:
    """Paragraphs, each split into sentences if too long, and a sentence longer than a chunk by words."""
    pieces: list[str] = []
    for para in re.split(r"\n\s*\n", text):
        para = " ".join(para.split())
        if not para:
            continue
        if len(para) <= target:
            pieces.append(para)
            continue
        for sentence in _SENTENCE_END.split(para):
            while len(sentence) > target:
                cut = sentence.rfind(" ", 0, target)
                cut = cut if cut > 0 else target
                pieces.append(sentence[:cut])
                sentence = sentence[cut:].strip()
            if sentence:
                pieces.append(sentence)
    return pieces


def chunk_text(text: str, target: int = TARGET, overlap: int = OVERLAP) -> list[str]:
    """Greedy packing of whole pieces up to ``target`` chars; a new chunk starts with the previous
    chunk's last piece when that piece is at most ``overlap`` chars."""
    chunks: list[str] = []
    current: list[str] = []
    for piece in _pieces(text, target):
        if current and len(" ".join([*current, piece])) > target:
            chunks.append(" ".join(current))
            tail = current[-1]
            current = [tail] if len(tail) <= overlap and len(tail) + len(piece) + 1 <= target else []
        current.append(piece)
    if current:
        chunks.append(" ".join(current))
    return chunks
