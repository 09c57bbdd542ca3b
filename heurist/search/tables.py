"""Search tables, declared on the shared ``Base`` (``heurist.db.base``) so one metadata (and one migration
chain) holds all.

Embeddings are stored as raw little-endian float32 bytes: the same column type on SQLite and PostgreSQL
(pgvector is not available on both), and a bit-exact round trip.
"""

from __future__ import annotations

from sqlalchemy import Boolean, Double, ForeignKey, Integer, LargeBinary, String, Text, false
from sqlalchemy.orm import Mapped, mapped_column

from heurist.db.base import Base, BigId


class SearchDocument(Base):
    """One ingested document; ``source`` says where it came from (a path, ``demo``, ``api``). A key searches
    its own documents (``owner_key_id``) and the public corpus (``public``), never another key's."""

    __tablename__ = "search_documents"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    title: Mapped[str] = mapped_column(String(500))
    url: Mapped[str | None] = mapped_column(Text(), nullable=True)
    source: Mapped[str] = mapped_column(String(500))
    created_at: Mapped[float] = mapped_column(Double())
    owner_key_id: Mapped[int | None] = mapped_column(BigId, nullable=True, index=True)
    public: Mapped[bool] = mapped_column(Boolean(), default=False, server_default=false())
    # sha256 of the owner, title, text and url: ingesting the same document again finds it instead of storing a twin
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
