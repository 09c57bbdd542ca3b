"""Search tables, declared on the shared ``Base`` (``heurist.db.base``) so one metadata (and one migration
chain) holds all.

Embeddings are stored as raw little-endian float32 bytes: the same column type on SQLite and PostgreSQL
(pgvector is not available on both), and a bit-exact round trip.
"""

from __future__ import annotations

from sqlalchemy import Double, ForeignKey, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from heurist.db.base import Base, BigId


class SearchDocument(Base):
    """One ingested document; ``source`` says where it came from (a path, ``demo``, an API key …)."""

    __tablename__ = "search_documents"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    title: Mapped[str] = mapped_column(String(500))
    url: Mapped[str | None] = mapped_column(Text(), nullable=True)
    source: Mapped[str] = mapped_column(String(500))
    created_at: Mapped[float] = mapped_column(Double())
    # sha256 of title, text and url: ingesting the same document again finds it instead of storing a twin
    content_sha256: Mapped[str | None] = mapped_column(String(64), unique=True, nullable=True)


class SearchChunk(Base):
    """A ~500-char slice of a document and its unit-length embedding."""

    __tablename__ = "search_chunks"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    document_id: Mapped[int] = mapped_column(BigId, ForeignKey("search_documents.id"), index=True)
    ordinal: Mapped[int] = mapped_column(Integer())
    text: Mapped[str] = mapped_column(Text())
    embedding: Mapped[bytes] = mapped_column(LargeBinary())
    dim: Mapped[int] = mapped_column(Integer())


__all__ = ["SearchChunk", "SearchDocument"]
