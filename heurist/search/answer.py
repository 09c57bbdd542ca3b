"""Answer a question from retrieved sources: one LLM job whose prompt numbers the sources [1]..[k].

The references are the retrieval hits, returned whether or not the model cites them: the retrieval is the
evidence, the citations only point into it. Citations are parsed from the verified job output, never
invented: a number outside 1..k is dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from heurist.jobs import TextOutput
from heurist.search.embedder import Embedder
from heurist.search.index import Hit, VectorIndex

if TYPE_CHECKING:
    from heurist.client import Client

SNIPPET_CHARS = 600  # a chunk is ~500; three of them stay well under a small model's prompt limit
_CITATION = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")


@dataclass(frozen=True)
class Reference:
    n: int
    title: str
    url: str | None
    doc_id: int
    snippet: str
    score: float

    def as_dict(self) -> dict[str, object]:
        return {"n": self.n, "title": self.title, "url": self.url, "doc_id": self.doc_id,
                "snippet": self.snippet, "score": round(self.score, 4)}


@dataclass(frozen=True)
class SearchAnswer:
    answer: str
    references: list[Reference]
    job_id: str | None
    cited: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {"answer": self.answer, "references": [r.as_dict() for r in self.references],
                "job_id": self.job_id, "cited": self.cited}


def build_prompt(question: str, hits: list[Hit]) -> str:
    """Numbered sources, then the question, with an instruction to cite by number."""
    sources = "\n\n".join(f"[{n}] {hit.title}\n{hit.snippet[:SNIPPET_CHARS]}" for n, hit in enumerate(hits, 1))
    return (
        "Answer the question using only the numbered sources below. After each fact, cite the source it "
        "comes from by its number in square brackets, like [1]. If the sources do not answer it, say so.\n\n"
        f"Sources:\n{sources}\n\nQuestion: {question.strip()}\nAnswer:"
    )


def parse_citations(answer_text: str, k: int) -> list[int]:
    """The distinct source numbers cited as [n] or [n, m], in order of first use, limited to 1..k."""
    cited: list[int] = []
    for group in _CITATION.findall(answer_text):
        for part in group.split(","):
            n = int(part)
            if 1 <= n <= k and n not in cited:
                cited.append(n)
    return cited


def references(hits: list[Hit]) -> list[Reference]:
    return [Reference(n, h.title, h.url, h.doc_id, h.snippet, h.score) for n, h in enumerate(hits, 1)]


def search_answer(client: Client, index: VectorIndex, embedder: Embedder, question: str, k: int = 3,
                  model: str = "smollm2-135m", max_tokens: int | None = 128,
                  timeout: float | None = 300.0) -> SearchAnswer:
    """Retrieve, then run one text job on the network and wait for its verified output."""
    hits = index.search(embedder.embed_one(question), k)
    refs = references(hits)
    if not hits:
        return SearchAnswer("No documents have been ingested yet.", refs, None, [])
    handle = client.submit_text(build_prompt(question, hits), model=model, max_tokens=max_tokens)
    result = handle.result(timeout)
    output = TextOutput.model_validate_json(client.fetch_output(result))
    return SearchAnswer(output.text, refs, handle.id, parse_citations(output.text, len(hits)))
