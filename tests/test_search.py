"""AI search: chunking, a vector index in the database (SQLite and PostgreSQL) with real MiniLM
embeddings, the CLI, and one answer written by a SmolLM2 job on the live network."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from heurist.client import Client
from heurist.db.engine import make_engine
from heurist.db.migrate import upgrade
from heurist.jobs import TextOutput
from heurist.search.answer import build_prompt, search_answer
from heurist.search.attribution import attribute
from heurist.search.chunking import chunk_text
from heurist.search.embedder import DIM, Embedder
from heurist.search.index import Hit, VectorIndex, from_bytes
from heurist.search.ingest import IngestError
from heurist.search.tables import SearchChunk

REPO = Path(__file__).resolve().parents[1]
HEURIST = str(Path(sys.executable).with_name("heurist"))

CORPUS = {
    "Volcanoes": (
        "A volcano is an opening in the crust of a planet where molten rock, ash and gases escape from "
        "below the surface. Magma rises because it is lighter than the solid rock around it.\n\n"
        "Stratovolcanoes such as Mount Fuji are built from layers of hardened lava and ash. Their "
        "eruptions can be explosive, sending pyroclastic flows down the slopes at hundreds of kilometres "
        "per hour. Shield volcanoes in Hawaii erupt runny basalt lava that flows gently for long distances."
    ),
    "Sourdough bread": (
        "Sourdough bread is leavened by a starter: a culture of wild yeast and lactic acid bacteria kept "
        "alive by feeding it flour and water every day.\n\n"
        "The bacteria make the dough sour, and the yeast makes carbon dioxide that lets it rise. Bakers "
        "mix the starter with flour, water and salt, fold the dough during a long fermentation, shape the "
        "loaf and bake it in a very hot oven, often inside a covered cast iron pot to trap steam."
    ),
    "Chess openings": (
        "A chess game starts with the opening, the first moves in which both players develop their knights "
        "and bishops, fight for the centre and castle their king to safety.\n\n"
        "Popular openings include the Sicilian Defence, where Black answers 1.e4 with c5, the Queen's "
        "Gambit, where White offers a pawn on c4, and the Ruy Lopez, named after a Spanish priest. "
        "Grandmasters memorise long lines of opening theory."
    ),
    "Honeybees": (
        "Honeybees live in colonies of tens of thousands of workers with a single queen that lays the eggs. "
        "Workers collect nectar and pollen from flowers and turn the nectar into honey stored in wax combs.\n\n"
        "A forager tells her sisters where flowers are with the waggle dance: the angle of the dance gives "
        "the direction relative to the sun and its length gives the distance. Bees pollinate many crops."
    ),
    "Marathon training": (
        "A marathon is a running race of 42.195 kilometres. Training usually takes four to five months and "
        "builds up a weekly long run, slowly, to avoid injury.\n\n"
        "Runners eat plenty of carbohydrates before the race to fill their glycogen stores and drink water "
        "and sports drinks during it. Hitting the wall happens around kilometre 30, when glycogen runs out. "
        "Tapering, running less in the last weeks, lets the legs recover before race day."
    ),
}

QUESTIONS = {
    "What happens when magma reaches the surface of the earth?": "Volcanoes",
    "How fast do pyroclastic flows move down a mountain?": "Volcanoes",
    "How do I keep my wild yeast culture alive for baking?": "Sourdough bread",
    "Why does my loaf taste tangy?": "Sourdough bread",
    "What should white play first to offer a pawn in the centre?": "Chess openings",
    "Which defence does black use against the king's pawn opening?": "Chess openings",
    "How do insects tell each other where the flowers are?": "Honeybees",
    "Who lays the eggs in a hive?": "Honeybees",
    "How long is the long-distance road race and how many months should I prepare?": "Marathon training",
    "Why do runners run out of energy late in the race?": "Marathon training",
}


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    """Loaded once for the module (a few seconds)."""
    e = Embedder()
    e.embed(["warm up"])
    return e


def _index(url: str, embedder: Embedder) -> Iterator[tuple[VectorIndex, dict[str, int], Engine]]:
    upgrade(url)
    engine = make_engine(url)
    index = VectorIndex(engine, embedder)
    ids = {title: index.add_document(title, text, url=f"https://example.org/{i}").id
           for i, (title, text) in enumerate(CORPUS.items())}
    try:
        yield index, ids, engine
    finally:
        engine.dispose()


@pytest.fixture
def built(db_url: str, embedder: Embedder) -> Iterator[tuple[VectorIndex, dict[str, int], Engine]]:
    yield from _index(db_url, embedder)


# --- chunking ---------------------------------------------------------------------------------------------

def test_chunks_respect_paragraphs_sentences_and_size() -> None:
    assert chunk_text("") == [] and chunk_text("  \n\n ") == []
    assert chunk_text("One paragraph.\n\nAnother one.") == ["One paragraph. Another one."]
    paras = [f"Paragraph {i} " + "word " * 60 for i in range(4)]  # ~320 chars each: one per chunk
    chunks = chunk_text("\n\n".join(p.strip() for p in paras))
    assert [c.split()[1] for c in chunks] == ["0", "1", "2", "3"]
    sentences = " ".join(f"Sentence number {i} says a little more than nothing at all." for i in range(40))
    chunks = chunk_text(sentences)
    assert all(len(c) <= 500 for c in chunks) and len(chunks) > 4
    assert all(c.endswith(".") and c[0].isupper() for c in chunks)  # cut between sentences only
    for prev, nxt in pairwise(chunks):  # overlap: the last sentence carries over
        assert nxt.startswith(prev[prev.rindex("Sentence"):])
    words = chunk_text("x" * 1200)  # no boundary at all: hard cut, nothing lost
    assert "".join(words) == "x" * 1200 and max(map(len, words)) <= 500


def test_prompt_lists_the_sources_in_reference_order() -> None:
    hits = [Hit(1, "A", None, "alpha", 0.9), Hit(2, "B", "https://b", "beta", 0.5)]
    prompt = build_prompt("What?", hits)
    assert prompt == "A: alpha\n\nB: beta\n\nWhat?"  # sources in rank order: reference n is the n-th


SOURCES = ["Honeybees dance to tell each other where the flowers are.",
           "Lava is molten rock that reaches the surface of a volcano."]


def test_attribution_keeps_valid_citations_and_cites_the_closest_source(embedder: Embedder) -> None:
    got = attribute("Bees waggle to show where flowers grow. Magma that escapes is called lava [2]. "
                    "See [7]. The answer [0] is:", SOURCES, embedder)
    assert got.text == ("Bees waggle to show where flowers grow [1]. Magma that escapes is called lava [2]. "
                        "See. The answer is:")  # invalid numbers dropped, a short non-claim left uncited
    assert got.cited == [1, 2]
    assert attribute("My favourite colour is a deep green.", SOURCES, embedder).cited == []  # nothing supports it
    looped = attribute("Lava is molten rock. Lava is molten rock. Lava is molten rock.", SOURCES, embedder)
    assert looped.text == "Lava is molten rock [2]." and looped.cited == [2]
    assert attribute("", SOURCES, embedder) == attribute("", [], embedder)


def test_importing_search_does_not_import_torch() -> None:
    code = ("import sys, heurist.search.index, heurist.search.answer, heurist.cli.search; "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


# --- the index on both databases --------------------------------------------------------------------------

def test_search_ranks_the_right_document_first(built: tuple[VectorIndex, dict[str, int], Engine],
                                               embedder: Embedder) -> None:
    index, ids, _ = built
    vectors = embedder.embed(list(QUESTIONS))
    ranked = {q: index.search(v, 3) for q, v in zip(QUESTIONS, vectors, strict=True)}
    misses = {q: [h.title for h in hits] for q, hits in ranked.items() if hits[0].title != QUESTIONS[q]}
    assert misses == {}
    for q, hits in ranked.items():
        assert len({h.doc_id for h in hits}) == 3  # best chunk per document, k documents
        assert hits[0].doc_id == ids[QUESTIONS[q]] and hits[0].url
        assert hits[0].snippet in " ".join(CORPUS[hits[0].title].split())
        assert hits[0].score >= hits[1].score >= hits[2].score


def test_embeddings_round_trip_bit_exactly(built: tuple[VectorIndex, dict[str, int], Engine],
                                           embedder: Embedder) -> None:
    _, _, engine = built
    with Session(engine) as session:
        rows = session.scalars(select(SearchChunk).order_by(SearchChunk.id)).all()
    assert rows and all(r.dim == DIM and len(r.embedding) == DIM * 4 for r in rows)
    stored = np.stack([from_bytes(r.embedding, r.dim) for r in rows])
    by_doc: dict[int, list[str]] = {}
    for r in rows:
        by_doc.setdefault(r.document_id, []).append(r.text)
    # re-embedded in the batches ingest used (padding changes the last bits): exactly the written bytes
    fresh = np.concatenate([embedder.embed(texts) for texts in by_doc.values()])
    assert stored.dtype == np.float32 and stored.tobytes() == fresh.astype("<f4").tobytes()
    assert np.allclose(np.linalg.norm(stored, axis=1), 1.0, atol=1e-5)


def test_index_refreshes_after_a_new_document(built: tuple[VectorIndex, dict[str, int], Engine],
                                              embedder: Embedder) -> None:
    index, _, engine = built
    question = embedder.embed_one("How do lighthouses warn ships at night?")
    assert index.search(question, 1)[0].title != "Lighthouses"  # the matrix is now cached
    other = VectorIndex(engine, embedder)  # another process's writer: the cache must notice the new chunks
    text = ("A lighthouse is a tower with a bright lamp and a lens that warns ships at night about rocks and "
            "guides them into the harbour.")
    added = other.add_document("Lighthouses", text)
    top = index.search(question, 1)[0]
    assert (top.doc_id, top.title, top.url) == (added.id, "Lighthouses", None)
    chunks = index.chunk_count()
    again = index.add_document("Lighthouses", text)  # ingesting it again stores nothing
    assert (again.id, again.chunks, again.duplicate) == (added.id, added.chunks, True) and not added.duplicate
    assert index.chunk_count() == chunks
    assert not index.add_document("Lighthouses", text, url="https://example.org/l").duplicate  # another source


def test_a_key_searches_its_own_documents_and_the_public_corpus_only(
        built: tuple[VectorIndex, dict[str, int], Engine], embedder: Embedder) -> None:
    """Issue 13, finding 5: one key's search returned another key's confidential document."""
    index, ids, _ = built  # the corpus built here is public (ingested without a key, as the CLI does)
    text = "Project Lighthouse: Acme acquires Globex in March for 2.1 billion; the board votes on Friday."
    secret = index.add_document("Merger plan", text, owner=1)
    question = embedder.embed_one("Which company does Acme acquire, and when?")
    titles = {key: [h.title for h in index.search(question, 10, key_id=key)] for key in (1, 2, None)}
    assert titles[1][0] == "Merger plan"  # its owner finds it first
    assert "Merger plan" not in titles[2] and "Merger plan" not in titles[None]  # nobody else sees it
    assert set(titles[2]) == set(titles[None]) == set(ids) & set(titles[2])  # public documents, for every key
    copy = index.add_document("Merger plan", text, owner=2)  # the same text from another key: its own copy
    assert not copy.duplicate and copy.id != secret.id  # "already stored" would tell key 2 what key 1 holds
    assert index.add_document("Merger plan", text, owner=1).duplicate  # the owner's own duplicate is found


def test_empty_index_and_bad_documents(sqlite_url: str, embedder: Embedder) -> None:
    upgrade(sqlite_url)
    index = VectorIndex(make_engine(sqlite_url), embedder)
    assert index.search(embedder.embed_one("anything"), 3) == []
    with pytest.raises(IngestError, match="no text"):
        index.add_document("Empty", "  \n\n  ")
    with pytest.raises(ValueError, match="no embedder"):
        VectorIndex(index.engine).add_document("T", "text")


# --- the CLI ---------------------------------------------------------------------------------------------

def _cli(*args: str, db: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEURIST_")}
    env |= {"HEURIST_DATABASE_URL": f"sqlite:///{db}", "COLUMNS": "200"}
    return subprocess.run([HEURIST, "search", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow  # the CLI embeds a corpus in a child process: 25-45 s (`make test-slow`)
def test_cli_ingest_and_query(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    for i, (title, text) in enumerate(CORPUS.items()):
        (docs / f"doc{i}.md").write_text(f"# {title}\n\n{text}\n")
    (docs / "notes.txt").write_text("Plain text without a heading about tides and the moon.\n")
    (docs / "empty.md").write_text("")
    (docs / "ignored.csv").write_text("a,b\n")
    db = tmp_path / "search.sqlite"
    done = _cli("ingest", str(docs), "--json", db=db)
    assert done.returncode == 0, done.stderr
    titles = [d["title"] for d in json.loads(done.stdout)["documents"]]
    assert titles == [*CORPUS, "notes"] and "skipped" in done.stderr and "empty.md" in done.stderr
    done = _cli("query", "Who lays the eggs in a hive?", "--k", "2", "--json", db=db)
    assert done.returncode == 0, done.stderr
    hits = json.loads(done.stdout)
    assert [h["n"] for h in hits] == [1, 2] and hits[0]["title"] == "Honeybees"


@pytest.mark.slow  # the CLI embeds a corpus in a child process: 25-45 s (`make test-slow`)
def test_cli_demo_corpus_and_errors(tmp_path: Path) -> None:
    db = tmp_path / "demo.sqlite"
    done = _cli("ingest", "--demo-corpus", db=db)
    assert done.returncode == 0 and "ingested 8 new document(s), 0 already there" in done.stdout, done.stderr
    again = _cli("ingest", "--demo-corpus", db=db)  # a re-run stores nothing twice
    assert again.returncode == 0 and "ingested 0 new document(s), 8 already there" in again.stdout, again.stderr
    text = _cli("query", "How are cheating miners caught?", db=db)  # the text form, on the shipped corpus
    assert text.returncode == 0 and "[1] Audits and cheating" in text.stdout, text.stderr
    missing = _cli("ingest", str(tmp_path / "nope"), db=db)
    assert missing.returncode == 2 and "no such file or directory" in missing.stderr
    (tmp_path / "empty.md").write_text("\n")
    empty = _cli("ingest", str(tmp_path / "empty.md"), db=db)
    assert empty.returncode == 2 and "is empty" in empty.stderr
    neither = _cli("ingest", db=db)
    assert neither.returncode == 2 and "--demo-corpus" in neither.stderr


# --- one answer on the live network -------------------------------------------------------------------------

def test_search_answer_on_the_live_network(client: Client, miner_address: str, sqlite_url: str,
                                           embedder: Embedder) -> None:
    for index, ids, _ in _index(sqlite_url, embedder):
        got = search_answer(client, index, embedder, "How do honeybees tell each other where flowers are?",
                            k=3, max_tokens=48)
        first = got.references[0]
        assert (first.n, first.title, first.doc_id) == (1, "Honeybees", ids["Honeybees"])
        assert [r.n for r in got.references] == [1, 2, 3] and first.url == f"https://example.org/{3}"
        assert got.job_id is not None
        [view] = client.wait_all([got.job_id], 5)
        output = TextOutput.model_validate_json(client.fetch_output(client.to_result(view)))
        honeybees = next(r.n for r in got.references if r.title == "Honeybees")
        assert honeybees in got.cited and f"[{honeybees}]" in got.answer  # the answer cites the right document
        for sentence in got.answer.split(". "):  # every sentence is the verified job output's, citations aside
            assert re.sub(r" \[[\d, ]+\]", "", sentence).rstrip(".") in output.text
