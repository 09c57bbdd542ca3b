"""Inline outputs (``heurist.ledger.inline``): the bytes ride in ``SignedCompletion.output``, outside the signature,
so a miner can send bytes other than the ones it signed for. The attacker is a registered miner with only its own
restricted broker user and key, publishing raw AMQP into its own inbox; it holds genuine jobs of the victim's
(a same-tier miner reads them off its tier queue), and the honest miner serves the same text model and inlines.

1. A claim signed for the honest answer (sha256, size, tokens), and inline a forged answer that passes every other
   check (same length and counts, its text what its token ids decode to: the honest ids reversed), with the honest
   answer PUT to the job's mutable key so that a ledger reading that key would be fooled: ``sha256_mismatch``.
2. The honest answer inline, its sha256 claimed, its size claimed one byte larger: ``size_mismatch``.
3. The honest answer inline with inflated token counts: ``token_mismatch`` (recounted from the inline bytes).
4. Inline bytes of 32 KiB + 1 (43,692 chars of base64, under the 64 KiB message limit): dead-lettered
   ``malformed`` by validation; 48 KiB (65,536 chars alone): dead-lettered ``oversized``. The job is never judged.
5. The job's presigned URL read off the tier queue, junk PUT to the mutable key before and after the honest
   miner's inline completion is credited: the mutable key holds the junk, the client reads the honest answer.

Measured: every attack is refused with its reason, nothing is credited to the attacker (0 jobs, 0 points), the
forged answer reaches no frozen key, each refused job is re-sent and credited once to the honest miner, and the honest
network keeps crediting inline answers once each (its mutable keys stay empty).
"""

from __future__ import annotations

import base64
import hashlib
import time
from typing import Any

import pytest
from sqlalchemy import text

from heurist.access import BrokerAccess
from heurist.catalog.tokenizer import TokenizerBook
from heurist.client import Client
from heurist.deadletters.listing import peek
from heurist.embedded import EmbeddedNetwork, wait_until
from heurist.jobs import Completion, DeviceInfo, JobState, TextOutput, Timings
from heurist.ledger.tables import Reason
from heurist.signing import sign_message
from heurist.storage.freeze import frozen_key
from heurist.storage.presigned import put_presigned
from heurist.submission import text_params
from tasks.names import RECORD_COMPLETION
from tests.adversary.raw import Attacker, recorded_job, registered_attacker, task_message
from tests.adversary.test_overwrite_after_credit import steal_url

# Each module starts its own network (about 1-4 min here): run by `make test-slow`, and so by CI.
pytestmark = pytest.mark.slow

MODEL = "smollm2-135m"
PROMPT = "Name three primary colours."
MAX_TOKENS = 16
DEVICE = DeviceInfo(kind="cpu", name="cpu", vram_gb=8.0)


@pytest.fixture(scope="module")
def network_settings() -> dict[str, Any]:
    """No sampled audits; one job at a time, so a queued job waits where the attacker can read it."""
    return {"audit_base_rate": 0.0, "audit_new_miner_rate": 0.0, "audit_suspicious_rate": 0.0, "miner_max_batch": 1}


@pytest.fixture(scope="module")
def honest_models() -> list[str]:
    return [MODEL]


@pytest.fixture(scope="module")
def attacker(client: Client, access: BrokerAccess) -> Attacker:
    return registered_attacker(client, access, MODEL)


@pytest.fixture(scope="module")
def reference(client: Client, honest: str) -> tuple[bytes, str]:
    """The honest miner's answer to ``PROMPT`` (inline: it never wrote the mutable key) and its pinned weights."""
    result = client.submit_text(PROMPT, model=MODEL, max_tokens=MAX_TOKENS).result(timeout=300)
    assert result.state is JobState.COMPLETED and result.miner == honest
    assert client.store.stat(result.output_key) is None, "the honest miner uploaded instead of inlining"
    with client.ledger.engine.connect() as db:
        weights = str(db.execute(text("SELECT weights_sha256 FROM completions WHERE job_id = :j"),
                                 {"j": result.job_id}).scalar_one())
    return client.fetch_output(result), weights


def _send(attacker: Attacker, job_id: str, weights: str, inline: bytes, *, sha256: str, size: int,
          tokens: tuple[int, int]) -> dict[str, Any]:
    """A correctly signed claim of (sha256, size, tokens) with ``inline`` as its output, published raw."""
    claim = Completion(job_id=job_id, model_id=MODEL, miner=attacker.wallet.address, output_sha256=sha256,
                       output_bytes=size, content_type="application/json", input_tokens=tokens[0],
                       output_tokens=tokens[1], timings=Timings(run_s=1.0, upload_s=0.0, total_s=1.0),
                       device=DEVICE, weights_sha256=weights, finished_at=time.time())
    signed = {"completion": claim.model_dump(mode="json"), "signature": sign_message(attacker.wallet, claim),
              "output": base64.b64encode(inline).decode()}  # by hand: the model refuses more than 32 KiB
    attacker.to_ledger(task_message(RECORD_COMPLETION, [signed]))
    return signed


def _credited_once_to_honest(client: Client, honest: str, job_id: str, junk: bytes) -> None:
    [view] = client.wait_all([job_id], 300)
    assert view.state is JobState.COMPLETED and view.miner == honest
    assert client.ledger.points_entries(job_id) == 1
    data = client.fetch_output(client.to_result(view))  # checked against the ledger's sha256
    assert data != junk and TextOutput.model_validate_json(data).text


def _honest_network_works(client: Client, honest: str, attacker: Attacker) -> None:
    after = client.submit_text("Name a fruit.", model=MODEL, max_tokens=8).result(timeout=300)
    assert after.state is JobState.COMPLETED and after.miner == honest
    assert client.ledger.points_entries(after.job_id) == 1 and client.store.stat(after.output_key) is None
    assert TextOutput.model_validate_json(client.fetch_output(after)).text
    [standing] = [m for m in client.ledger.miner_points() if m.address == attacker.wallet.address]
    assert (standing.jobs, standing.points_micro) == (0, 0)


def _counts(answer: bytes) -> tuple[int, int]:
    stored = TextOutput.model_validate_json(answer)
    return stored.input_tokens, stored.output_tokens


JUNK = b'{"text": "buy my coin", "junk": "' + b"x" * 64 + b'"}'


def _forged(client: Client, answer: bytes) -> bytes:
    """Junk that passes every check but the hash: the honest answer's tokens reversed, its text what they decode to
    (the attacker runs the genuine model files), the same counts and exactly the same length."""
    honest = TextOutput.model_validate_json(answer)
    tokenizer = TokenizerBook(None)(client.catalog[MODEL])
    assert tokenizer is not None
    ids = honest.output_token_ids[::-1]
    forged = honest.model_copy(update={"text": tokenizer.decode(ids), "output_token_ids": ids})
    data = forged.model_dump_json().encode()
    assert len(data) == len(answer) and data != answer
    return data


@pytest.mark.parametrize(("attack", "reason"), [("swapped", Reason.SHA256_MISMATCH), ("size", Reason.SIZE_MISMATCH),
                                                ("tokens", Reason.TOKEN_MISMATCH)])
def test_inline_bytes_are_judged_by_the_ledgers_own_hash(network: EmbeddedNetwork, client: Client, honest: str,
                                                         attacker: Attacker, reference: tuple[bytes, str],
                                                         attack: str, reason: Reason) -> None:
    answer, weights = reference
    signed_job, output_key = recorded_job(client, MODEL, text_params(client.catalog[MODEL], PROMPT,
                                                                     max_tokens=MAX_TOKENS))
    job_id, real = signed_job.job.job_id, hashlib.sha256(answer).hexdigest()
    inline, size, tokens = answer, len(answer), _counts(answer)
    if attack == "swapped":  # the claimed bytes sit in the mutable key: only the ledger's own hash refuses
        put_presigned(signed_job.job.output_url, answer, "application/json")
        inline = _forged(client, answer)
    elif attack == "size":
        size += 1
    else:
        tokens = (tokens[0] + 7, tokens[1] + 40)
    _send(attacker, job_id, weights, inline, sha256=real, size=size, tokens=tokens)

    wait_until(lambda: client.ledger.rejections(job_id) or client.ledger.points_entries(job_id), 60,
               "the ledger's verdict", check=network.check_alive)
    view = client.ledger.job(job_id)
    assert view is not None and view.miner != attacker.wallet.address, "the attacker's claim was credited"
    with client.ledger.engine.connect() as db:
        detail = str(db.execute(text("SELECT detail FROM rejections WHERE job_id = :j ORDER BY id LIMIT 1"),
                                {"j": job_id}).scalar_one())
    expected = {"swapped": f"sha256 {hashlib.sha256(inline).hexdigest()}, claimed {real}",
                "size": f"{len(answer)} bytes, claimed {len(answer) + 1}",
                "tokens": f"claims {tokens[0]}+{tokens[1]} tokens; the stored answer holds"}[attack]
    assert expected in detail, detail
    if attack == "swapped":  # refused before freezing: the junk never reaches a frozen key
        assert client.store.stat(frozen_key(output_key, hashlib.sha256(inline).hexdigest())) is None
    _credited_once_to_honest(client, honest, job_id, _forged(client, answer))  # re-sent at once to the honest miner
    assert client.ledger.rejections(job_id) == [(reason, attacker.wallet.address)]
    _honest_network_works(client, honest, attacker)


def test_too_large_inline_outputs_are_dead_lettered(network: EmbeddedNetwork, client: Client, honest: str,
                                                    attacker: Attacker, reference: tuple[bytes, str]) -> None:
    _, weights = reference
    signed_job, _ = recorded_job(client, MODEL, text_params(client.catalog[MODEL], PROMPT, max_tokens=MAX_TOKENS))
    job_id = signed_job.job.job_id
    sizes = {"malformed": 32_768 + 1, "oversized": 48 * 1024}
    sent = [_send(attacker, job_id, weights, b"7" * size, sha256=hashlib.sha256(b"7" * size).hexdigest(),
                  size=size, tokens=(1, 1)) for size in sizes.values()]
    # 43,692 chars of base64 leave ~21 KB for the claim under the 64 KiB limit; 65,536 alone reach it.
    assert [len(signed["output"]) for signed in sent] == [43_692, 65_536]

    settings = network.settings()

    def mine() -> list[Any]:
        return [letter for letter in peek(settings, 50).letters if letter.sender == attacker.creds.user]

    wait_until(lambda: len(mine()) >= 2, 60, "both messages to be kept", check=network.check_alive)
    by_reason = {letter.reason: letter for letter in mine()}
    assert set(by_reason) == set(sizes) and len(mine()) == 2
    assert by_reason["malformed"].detail.startswith("output: Value should have at most 32768 items"), by_reason
    assert "above the limit of 65536" in by_reason["oversized"].detail
    assert client.ledger.rejections(job_id) == [] and client.ledger.points_entries(job_id) == 0
    view = client.ledger.job(job_id)
    assert view is not None and view.state is JobState.QUEUED and view.frozen_key is None  # never judged
    _honest_network_works(client, honest, attacker)


def test_writing_the_mutable_key_changes_nothing(network: EmbeddedNetwork, client: Client, honest: str,
                                                 attacker: Attacker, reference: tuple[bytes, str]) -> None:
    queue = client.catalog[MODEL].queue
    for attempt in range(3):  # the honest miner busy with a long answer, so the victim's job waits in the queue
        client.submit_text(f"Write a long story about ships, part {attempt}.", model=MODEL, max_tokens=512)
        victim = client.submit_text(PROMPT, model=MODEL, max_tokens=MAX_TOKENS)
        try:
            url = steal_url(attacker.creds.broker_url, queue, victim.id, timeout=10)
            break
        except AssertionError:
            continue
    else:
        raise AssertionError("the attacker never read a victim job off the queue")
    before, after = JUNK + b" before", JUNK + b" after"
    put_presigned(url, before, "application/json")

    result = victim.result(timeout=300)
    assert result.state is JobState.COMPLETED and result.miner == honest
    assert client.store.get(result.output_key) == before  # the honest miner inlined: it never wrote that key
    original = client.fetch_output(result)
    assert result.frozen_key == frozen_key(result.output_key, hashlib.sha256(original).hexdigest())
    put_presigned(url, after, "application/json")  # the URL still writes the mutable key until the deadline
    assert client.store.get(result.output_key) == after
    assert victim.download() == original and TextOutput.model_validate_json(original).text
    again = client.to_result(client.ledger.job(victim.id))  # type: ignore[arg-type]
    assert (again.state, again.miner, again.points) == (JobState.COMPLETED, honest, result.points)
    assert client.ledger.points_entries(victim.id) == 1 and client.ledger.rejections(victim.id) == []
    _honest_network_works(client, honest, attacker)
