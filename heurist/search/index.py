"""A vector index over ``search_chunks``: exact cosine similarity with numpy.

Why exact and in memory: the corpus is small (a demo corpus, an application's documents), a scan of a
few thousand 384-d unit vectors is one matrix-vector product (well under a millisecond), and pgvector
is not available on SQLite, so one code path behaves identically on both databases. The matrix is
loaded once and reloaded only when the chunk count changes (chunks are only ever added).

Tenants (issue 13, finding 5: one key's search returned another key's confidential document). A document
belongs to the API key that ingested it, or is public (the operator's corpus). ``search`` scores only the rows
the asking key may see: a mask over the same matrix, so scoping costs no query and no second index. The
duplicate check is per owner too (the owner is in the content digest): "already ingested" must not tell one
tenant what another has stored.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass

import numpy as np
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from heurist.search.chunking import chunk_text
from heurist.search.embedder import DIM, Embedder, Vectors
from heurist.search.ingest import IngestError
from heurist.search.tables import SearchChunk, SearchDocument


@dataclass(frozen=True)
class Hit:
    """A document's best-matching chunk."""

    doc_id: int
    title: str
    url: str | None
    snippet: str
    score: float


@dataclass(frozen=True)
class _Matrix:
    count: int
    vectors: Vectors  # [n, DIM], unit rows
    doc_ids: np.ndarray
    chunk_ids: list[int]
    owners: np.ndarray  # per row: the owning key's id, PUBLIC for the public corpus, HIDDEN for neither


PUBLIC, HIDDEN = -1, -2


def to_bytes(vector: Vectors) -> bytes:
    """Little-endian float32 bytes: the stored form, bit-exact on both databases."""
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


def from_bytes(data: bytes, dim: int) -> Vectors:
    return np.frombuffer(data, dtype="<f4", count=dim).astype(np.float32)


@dataclass(frozen=True)
class Ingested:
    """What ``add_document`` did: the document's id, the chunks it stored, and whether it was there already."""

    id: int
    chunks: int
    duplicate: bool = False


def content_sha256(title: str, text: str, url: str | None, owner: int | None = None) -> str:
    """The duplicate key: the same document of the same owner (None: the public corpus)."""
    return hashlib.sha256("\0".join(("public" if owner is None else f"key:{owner}", title, text, url or ""))
                          .encode()).hexdigest()


class VectorIndex:
    """Documents in, top-k documents out. ``embedder`` is needed to add documents, not to search."""

    def __init__(self, engine: Engine, embedder: Embedder | None = None) -> None:
        self.engine = engine
        self.embedder = embedder
        self._lock = threading.Lock()
        self._matrix: _Matrix | None = None

    def find(self, title: str, text: str, url: str | None = None, owner: int | None = None) -> Ingested | None:
        """The owner's stored copy of this document, if any (nothing is embedded or charged for it again)."""
        return self._find(content_sha256(title, text, url, owner))

    def add_document(self, title: str, text: str, url: str | None = None, source: str = "api",
                     owner: int | None = None) -> Ingested:
        """Chunk, embed and store one document in one transaction, for API key ``owner`` (None: the public
        corpus). The same owner's same title, text and url again is found, not stored twice (and not embedded
        again), so re-running an ingest is safe."""
        digest = content_sha256(title, text, url, owner)
        found = self._find(digest)
        if found is not None:
            return found
        chunks = chunk_text(text)
        if not chunks:
            raise IngestError(f"document {title!r} has no text (only white space)")
        if self.embedder is None:
            raise ValueError("this index has no embedder: pass one to add documents")
        vectors = self.embedder.embed(chunks)
        try:
            with Session(self.engine) as session, session.begin():
                doc = SearchDocument(title=title, url=url, source=source, created_at=time.time(),
                                     content_sha256=digest, owner_key_id=owner, public=owner is None)
                session.add(doc)
                session.flush()
                session.add_all(SearchChunk(document_id=doc.id, ordinal=i, text=chunk, embedding=to_bytes(vec), dim=DIM)
                                for i, (chunk, vec) in enumerate(zip(chunks, vectors, strict=True)))
                return Ingested(doc.id, len(chunks))
        except IntegrityError:  # the same document, added at the same moment by another request
            again = self._find(digest)
            if again is None:
                raise
            return again

    def _find(self, digest: str) -> Ingested | None:
        with Session(self.engine) as session:
            doc_id = session.scalar(select(SearchDocument.id).where(SearchDocument.content_sha256 == digest))
            if doc_id is None:
                return None
            chunks = session.scalar(select(func.count()).select_from(SearchChunk)
                                    .where(SearchChunk.document_id == doc_id))
        return Ingested(doc_id, int(chunks or 0), duplicate=True)

    def chunk_count(self) -> int:
        with Session(self.engine) as session:
            return int(session.scalar(select(func.count()).select_from(SearchChunk)) or 0)

    def document_count(self) -> int:
        with Session(self.engine) as session:
            return int(session.scalar(select(func.count()).select_from(SearchDocument)) or 0)

    def _load(self) -> _Matrix:
        """The cached matrix, reloaded when another process (or this one) has added chunks."""
        count = self.chunk_count()
        with self._lock:
            if self._matrix is None or self._matrix.count != count:
                with Session(self.engine) as session:
                    rows = session.execute(select(SearchChunk.id, SearchChunk.document_id, SearchChunk.embedding,
                                                  SearchChunk.dim, SearchDocument.owner_key_id, SearchDocument.public)
                                           .join(SearchDocument, SearchDocument.id == SearchChunk.document_id)
                                           .order_by(SearchChunk.id)).all()
                vectors = (np.stack([from_bytes(r.embedding, r.dim) for r in rows]) if rows
                           else np.zeros((0, DIM), dtype=np.float32))
                owners = [PUBLIC if r.public else HIDDEN if r.owner_key_id is None else r.owner_key_id for r in rows]
                self._matrix = _Matrix(len(rows), vectors, np.array([r.document_id for r in rows], dtype=np.int64),
                                       [r.id for r in rows], np.array(owners, dtype=np.int64))
            return self._matrix

    def search(self, query_vector: Vectors, k: int = 3, key_id: int | None = None) -> list[Hit]:
        """The ``k`` documents whose best chunk is most similar to the (unit) query vector, among those API key
        ``key_id`` may see: its own and the public corpus (None: the public corpus only)."""
        matrix = self._load()
        if matrix.count == 0 or k <= 0:
            return []
        visible = matrix.owners == PUBLIC
        if key_id is not None:
            visible |= matrix.owners == key_id
        rows = np.flatnonzero(visible)
        scores = np.full(matrix.count, -np.inf, dtype=np.float32)
        scores[rows] = matrix.vectors[rows] @ np.asarray(query_vector, dtype=np.float32)
        best: dict[int, int] = {}  # doc id -> row of its best chunk
        for row in rows[np.argsort(-scores[rows], kind="stable")]:
            doc_id = int(matrix.doc_ids[row])
            if doc_id not in best:
                best[doc_id] = int(row)
                if len(best) == k:
                    break
        return self._hits(best, matrix, scores)

    def _hits(self, best: dict[int, int], matrix: _Matrix, scores: Vectors) -> list[Hit]:
        with Session(self.engine) as session:
            docs = {d.id: d for d in session.scalars(select(SearchDocument).where(SearchDocument.id.in_(best)))}
            texts = dict(session.execute(select(SearchChunk.id, SearchChunk.text)
                                         .where(SearchChunk.id.in_([matrix.chunk_ids[r] for r in best.values()])))
                         .tuples().all())
        return [Hit(doc_id, docs[doc_id].title, docs[doc_id].url, texts[matrix.chunk_ids[row]], float(scores[row]))
                for doc_id, row in best.items()]
