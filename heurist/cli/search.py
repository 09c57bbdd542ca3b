"""``heurist search``: ingest documents into the search index and query it (retrieval only, no LLM)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import Progress

from heurist.cli.common import console, err_console, print_json, settings_with
from heurist.search.embedder import Embedder
from heurist.search.index import VectorIndex
from heurist.search.ingest import DEMO_CORPUS, IngestError, SourceDocument, collect, read_document

app = typer.Typer(
    help="AI search: ingest documents, query them.", no_args_is_help=True,
    rich_markup_mode="markdown",
)


def _index() -> VectorIndex:
    """The index of HEURIST_DATABASE_URL, migrated on open like every ledger process does."""
    from heurist.db import open_engine

    return VectorIndex(open_engine(settings_with()), Embedder())


def _documents(files: list[Path], single: bool) -> list[SourceDocument]:
    """Every readable document; an empty file is an error when named alone, skipped in a directory."""
    docs: list[SourceDocument] = []
    for path in files:
        try:
            docs.append(read_document(path))
        except IngestError as err:
            if single:
                raise
            err_console.print(f"[yellow]skipped:[/] {err}")
    if not docs:
        raise IngestError("nothing to ingest: every file is empty")
    return docs


@app.command("ingest")
def ingest(
    path: Path | None = typer.Argument(None, help="A .md/.txt file or a directory of them."),
    demo_corpus: bool = typer.Option(False, "--demo-corpus", help="Ingest the shipped corpus about Heurist."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
) -> None:
    """Chunk, embed (all-MiniLM-L6-v2) and store documents in the public corpus, which every API key searches
    beside its own documents (POST /v1/documents); the title is the first heading or file name."""
    if (path is None) == (not demo_corpus):
        raise IngestError("give a PATH or --demo-corpus (one of them)")
    root = DEMO_CORPUS if demo_corpus else path
    assert root is not None
    docs = _documents(collect(root), single=root.is_file())
    index = _index()
    added: list[dict[str, object]] = []
    with Progress(console=err_console, transient=True, disable=json_out) as progress:
        task = progress.add_task("embedding", total=len(docs))
        for doc in docs:
            done = index.add_document(doc.title, doc.text, source="demo" if demo_corpus else doc.source)
            added.append({"id": done.id, "title": doc.title, "source": doc.source, "duplicate": done.duplicate})
            progress.advance(task)
    if json_out:
        print_json({"documents": added, "chunks_total": index.chunk_count()})
        return
    for row in added:
        console.print(f"{row['id']:>5}  {row['title']}" + ("  (already there)" if row["duplicate"] else ""))
    new = sum(not row["duplicate"] for row in added)
    console.print(f"ingested {new} new document(s), {len(added) - new} already there; "
                  f"the index holds {index.chunk_count()} chunks")


@app.command("query")
def query(
    question: str = typer.Argument(..., help="What to look for."),
    k: int = typer.Option(3, "--k", min=1, max=20, help="How many documents to return."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
) -> None:
    """The k most relevant documents with their best passage (retrieval only: no LLM job)."""
    index = _index()
    assert index.embedder is not None
    hits = index.search(index.embedder.embed_one(question), k)
    if json_out:
        print_json([{"n": n, "doc_id": h.doc_id, "title": h.title, "url": h.url, "score": round(h.score, 4),
                     "snippet": h.snippet} for n, h in enumerate(hits, 1)])
        return
    if not hits:
        err_console.print("the index is empty: run `heurist search ingest --demo-corpus` or ingest a PATH")
        return
    for n, h in enumerate(hits, 1):
        console.print(f"[bold][{n}] {h.title}[/] ({h.url or f'doc {h.doc_id}'}, score {h.score:.3f})")
        console.print(f"    {h.snippet}", highlight=False)
