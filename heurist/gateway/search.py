"""POST /v1/documents and POST /v1/search: retrieval over ingested documents, answered by one LLM job.

The answer's job is charged like a completion (worst case reserved, settled at the verified tokens). The
embedder (torch) loads on the first search or ingest, not at gateway start.
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
from heurist.gateway.llm_schemas import CompletionRequest
from heurist.jobs import Text
from heurist.search.answer import build_prompt, references
from heurist.search.attribution import attribute
from heurist.search.embedder import Embedder
from heurist.search.index import VectorIndex

router = APIRouter(tags=["search"])


class DocumentIn(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    title: Text = Field(..., min_length=1, max_length=500)
    text: Text = Field(..., min_length=1, max_length=200_000)
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
    duplicate: bool = Field(False, description="The same title, text and url were ingested before: that "
                                               "document's id, nothing stored again.")


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

    def ingest(self, doc: DocumentIn) -> DocumentOut:
        added = self.index.add_document(doc.title, doc.text, doc.url)
        return DocumentOut(id=added.id, title=doc.title, chunks=added.chunks, duplicate=added.duplicate)

    def answer(self, key_id: int, req: SearchRequest) -> SearchResponse:
        embedder = self.index.embedder
        assert embedder is not None
        hits = self.index.search(embedder.embed_one(req.question), req.k)
        refs = [ReferenceOut(n=r.n, title=r.title, url=r.url, document_id=r.doc_id, snippet=r.snippet,
                             score=round(r.score, 4)) for r in references(hits)]
        if not hits:
            return SearchResponse(answer="No documents have been ingested yet (POST /v1/documents).",
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
    return await run_in_threadpool(service.ingest, doc)


@router.post("/v1/search", response_model=SearchResponse, responses=ERRORS)
async def search(req: SearchRequest, service: SearchService = Depends(search_service),
                 key: ApiKey = Depends(limited_key)) -> SearchResponse:
    """Answer a question from the ingested documents, citing them as [1], [2]; charged as one LLM job."""
    return await run_in_threadpool(service.answer, key.id, req)
