"""The ledger recounts text tokens with the model's own tokenizer, torch-free (issue 13, finding 1).

Against the miner's transformers tokenizer on real SmolLM2 answers: the ids decode to the miner's text and the
templated prompt counts the miner's input tokens. Then the ledger (SQLite and PostgreSQL, answers on SeaweedFS)
credits an honest answer at exactly those counts and refuses an answer whose text is not its ids, or whose
prompt count is off by one, as ``token_mismatch``.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from heurist.catalog import Catalog, load_catalog
from heurist.catalog.tokenizer import ModelTokenizer, TokenizerBook
from heurist.identity import Wallet
from heurist.jobs import JobState, TextOutput, TextParams
from heurist.ledger.service import Ledger
from heurist.ledger.tables import Reason
from heurist.points import job_points, to_micro
from heurist.storage.backend import ObjectStore
from tests.fixtures.ledger import Clock, deliver, text_job

MODEL = "smollm2-135m"
PROMPTS = ["Name three primary colours.", "Écris une phrase avec des accents: é à ç.", "List emoji: 🐝 🌋 🍞"]


@pytest.fixture(scope="module")
def tokenizer() -> ModelTokenizer:
    found = TokenizerBook(None)(load_catalog()[MODEL])
    assert found is not None
    return found


@pytest.fixture(scope="module")
def answers(shared_models_dir: Path) -> list[TextOutput]:
    """What the miner's pipeline (transformers, torch) stores for each prompt."""
    from workers.miner.device import detect_device
    from workers.miner.pipelines import load_pipeline

    pipeline = load_pipeline(load_catalog()[MODEL], detect_device("cpu"), shared_models_dir)
    return [TextOutput.model_validate_json(pipeline.run(TextParams(prompt=p, max_tokens=24), time.time() + 600).data)
            for p in PROMPTS]


def test_the_ledger_tokenizer_imports_no_torch() -> None:
    code = ("import sys; from heurist.catalog import load_catalog; from heurist.catalog.tokenizer import TokenizerBook;"
            "t = TokenizerBook(None)(load_catalog()['smollm2-135m']); assert t is not None;"
            "print(t.prompt_tokens('hi'), 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-1] == "False"


def test_it_decodes_and_counts_as_the_miner_does(tokenizer: ModelTokenizer, answers: list[TextOutput]) -> None:
    for prompt, answer in zip(PROMPTS, answers, strict=True):
        assert tokenizer.decode(answer.output_token_ids) == answer.text
        assert tokenizer.prompt_tokens(prompt) == answer.input_tokens


@pytest.mark.parametrize("case", ["honest", "text not its ids", "prompt count off by one"])
def test_the_ledger_recounts_what_it_credits(engine: object, catalog: Catalog, clock: Clock,
                                             object_store: ObjectStore, answers: list[TextOutput],
                                             case: str) -> None:
    from heurist.catalog.attestation import WeightPins
    from tests.fixtures.ledger import register

    ledger = Ledger(engine, catalog, object_store, clock=clock, pins=WeightPins(None),  # type: ignore[arg-type]
                    tokenizers=TokenizerBook(None))
    miner = Wallet.create()
    assert register(ledger, miner).accepted
    honest = answers[0]
    stored = {"honest": honest,
              "text not its ids": honest.model_copy(update={"text": honest.text + " And a fourth: green."}),
              "prompt count off by one": honest.model_copy(update={"input_tokens": honest.input_tokens + 1})}[case]
    job = text_job(ledger, catalog, clock, prompt=PROMPTS[0], max_tokens=24)
    _, verdict = deliver(ledger, object_store, job, miner, stored.model_dump_json().encode(),
                         input_tokens=stored.input_tokens, output_tokens=stored.output_tokens)
    if case == "honest":
        expected = job_points(catalog[MODEL], job.params, honest.input_tokens, honest.output_tokens)
        assert verdict.accepted and verdict.points_micro == to_micro(expected)
    else:
        assert (verdict.accepted, verdict.reason, verdict.state) == (False, Reason.TOKEN_MISMATCH, JobState.QUEUED)


def test_a_model_without_a_verified_gguf_has_no_tokenizer(caplog: pytest.LogCaptureFixture) -> None:
    """Not installed, or a file that is not the pinned one: the ledger counts against the stored answer only."""
    spec = load_catalog()[MODEL]
    missing = spec.model_copy(update={"source": spec.source.model_copy(update={"ref": "no_such_package_here"})})
    tampered = spec.model_copy(update={"files": {name: "0" * 64 for name in spec.files}})
    assert TokenizerBook(None)(missing) is None and TokenizerBook(None)(tampered) is None  # a book per ledger
    assert caplog.text.count("no verified tokenizer on this ledger") == 2
    book = TokenizerBook(None)
    assert book(missing) is None and book(missing) is None  # looked up once: said once
    assert caplog.text.count("no verified tokenizer on this ledger") == 3
