"""POST /v1/documents and POST /v1/search: retrieval over ingested documents, answered by one LLM job.

The answer's job is charged like a completion (worst case reserved, settled at the verified tokens). The
embedder (torch) loads on the first search or ingest, not at gateway start.

Tenants and cost (issue 13, finding 5). A document belongs to the key that ingested it, and a search sees that
key's documents and the public corpus only (``heurist.search.index``). Ingestion was free: 199 kB of junk took
9 s of gateway CPU. Now a document over ``search_max_document_bytes`` is refused with 413 before any work, and
one under it is charged ``search_ingest_micro_units_per_byte`` per byte before it is embedded (402 when the key
cannot pay; given back if embedding fails; nothing for a duplicate of the key's own document).
"""

from __future__ import annotations

import threading
from functools import cached_property

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.concurrency import run_in_threadpool

from heurist.credits.tables import ApiKey
from heurist.gateway import llm
from heurist.gateway.deps import ERRORS, Gateway, limited_key
from heurist.gateway.errors import ApiError
from heurist.gateway.llm_schemas import CompletionRequest
from heurist.jobs import Text
from heurist.points import from_micro
from heurist.search.answer import build_prompt, references
from heurist.search.attribution import attribute
from heurist.search.embedder import Embedder
from heurist.search.index import VectorIndex, content_sha256

router = APIRouter(tags=["search"])


class DocumentIn(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    title: Text = Field(..., min_length=1, max_length=500)
    text: Text = Field(..., min_length=1, max_length=10_000_000, description="At most "
                       "HEURIST_SEARCH_MAX_DOCUMENT_BYTES UTF-8 bytes (413 above it); charged per byte.")
    url: Text | None = Field(None, max_length=2000)


    @field_validator("text")
    @classmethod
    def _has_words(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must contain more than white space")
        return value


class DocumentOut(BaseModel):
    id: int
    title: str
    chunks: int
    duplicate: bool = Field(False, description="This key ingested the same title, text and url before: that "
                                               "document's id, nothing stored or charged again.")
    units_charged: float = Field(0.0, description="What the ingestion cost the key (per UTF-8 byte of text).")


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    question: Text = Field(..., min_length=1, max_length=2000)
    k: int = Field(3, ge=1, le=10, description="How many documents to retrieve and cite.")
    model: str = Field("smollm2-135m", min_length=1, max_length=64, description="The text model that answers.")
    max_tokens: int = Field(128, ge=1, le=4096)


class ReferenceOut(BaseModel):
    n: int = Field(..., description="The number the answer cites it by: [n].")
    title: str
    url: str | None
    document_id: int
    snippet: str
    score: float


class SearchResponse(BaseModel):
    answer: str
    references: list[ReferenceOut]
    cited: list[int] = Field(..., description="Reference numbers the answer cites, in order of first use.")
    job_id: str | None
    units_charged: float


class SearchService:
    """The index and its embedder, made on first use (the embedder imports torch)."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self._lock = threading.Lock()

    @cached_property
    def index(self) -> VectorIndex:
        with self._lock:
            return VectorIndex(self.gw.client.ledger.engine, Embedder())

    def ingest(self, key_id: int, doc: DocumentIn) -> DocumentOut:
        """Refuse an oversized text (413), find the key's own copy, else charge, then embed and store."""
        size, settings = len(doc.text.encode("utf-8")), self.gw.settings
        if size > settings.search_max_document_bytes:
            raise ApiError(413, f"text is {size} bytes; a document may have at most "
                           f"{settings.search_max_document_bytes} (HEURIST_SEARCH_MAX_DOCUMENT_BYTES): split it "
                           "into several documents", param="text", code="document_too_large")
        found = self.index.find(doc.title, doc.text, doc.url, owner=key_id)
        if found is not None:
            return DocumentOut(id=found.id, title=doc.title, chunks=found.chunks, duplicate=True)
        price = size * settings.search_ingest_micro_units_per_byte
        ikey = f"ingest:{content_sha256(doc.title, doc.text, doc.url, key_id)}"
        self.gw.credits.charge(key_id, price, f"search ingestion: {size} bytes", ikey)
        try:
            added = self.index.add_document(doc.title, doc.text, doc.url, owner=key_id)
        except Exception:
            self.gw.credits.give_back(key_id, price, "search ingestion failed", f"refund:{ikey}")
            raise
        return DocumentOut(id=added.id, title=doc.title, chunks=added.chunks, duplicate=added.duplicate,
                           units_charged=0.0 if added.duplicate else from_micro(price))

    def answer(self, key_id: int, req: SearchRequest) -> SearchResponse:
        embedder = self.index.embedder
        assert embedder is not None
        hits = self.index.search(embedder.embed_one(req.question), req.k, key_id=key_id)
        refs = [ReferenceOut(n=r.n, title=r.title, url=r.url, document_id=r.doc_id, snippet=r.snippet,
                             score=round(r.score, 4)) for r in references(hits)]
        if not hits:
            return SearchResponse(answer="No documents to search: this key has ingested none (POST /v1/documents) "
                                  "and the public corpus is empty.",
                                  references=[], cited=[], job_id=None, units_charged=0.0)
        prompt = build_prompt(req.question, hits)
        completion = CompletionRequest(model=req.model, prompt=prompt, max_tokens=req.max_tokens)
        job = llm.start(self.gw, key_id, req.model, prompt, completion)
        output, units = llm.complete(self.gw, job)
        cited = attribute(output.text, [h.snippet for h in hits], embedder)
        return SearchResponse(answer=cited.text, references=refs, cited=cited.cited, job_id=job.job_id,
                              units_charged=units)


def search_service(request: Request) -> SearchService:
    """The app's ``SearchService`` (made by ``create_app``): the dependency of the search routes."""
    service: SearchService = request.app.state.search
    return service


@router.post("/v1/documents", response_model=DocumentOut, responses=ERRORS)
async def add_document(doc: DocumentIn, service: SearchService = Depends(search_service),
                       key: ApiKey = Depends(limited_key)) -> DocumentOut:
    """Ingest a document for search: chunked, embedded with all-MiniLM-L6-v2, stored in the database."""
    return await run_in_threadpool(service.ingest, key.id, doc)


@router.post("/v1/search", response_model=SearchResponse, responses=ERRORS)
async def search(req: SearchRequest, service: SearchService = Depends(search_service),
                 key: ApiKey = Depends(limited_key)) -> SearchResponse:
    """Answer a question from the ingested documents, citing them as [1], [2]; charged as one LLM job."""
    return await run_in_threadpool(service.answer, key.id, req)
