"""Every string and list a miner sends has a size limit (issue 12, attack 7: one completion stored 8 MB in
``rejections``, one hello 8 MB in ``miners``). Honest messages pass with room to spare; one character or
item over a limit makes the message malformed, and the error names the field."""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from heurist.deadletters import first_error
from heurist.identity import Wallet
from heurist.jobs import (
    MAX_ANSWER_CHARS,
    MAX_ANSWER_TOKENS,
    MAX_LISTED,
    Completion,
    DeviceInfo,
    Heartbeat,
    MinerHello,
    SignedCompletion,
    SignedHello,
    TextOutput,
    TokenChunk,
)
from heurist.settings import Settings
from heurist.signing import sign_message

WALLET = Wallet.create()
DEVICE = {"kind": "cpu", "name": "AMD EPYC 7B13 64-Core Processor (2 cores)", "vram_gb": 7.8, "torch_threads": 1}


def completion(**changes: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "job_id": "3f2b8c1e-9a4d-4e55-8f7a-0c6d2b1e9f00", "model_id": "smollm2-135m", "miner": WALLET.address,
        "output_sha256": hashlib.sha256(b"x").hexdigest(), "output_bytes": 1, "content_type": "application/json",
        "input_tokens": 12, "output_tokens": 32, "timings": {"run_s": 1.0, "upload_s": 0.01, "total_s": 1.01},
        "device": DEVICE, "weights_sha256": "0" * 64, "finished_at": time.time()}
    return {**fields, **changes}


def hello(**changes: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {"miner": WALLET.address, "models": ["tiny-sd", "smollm2-135m"],
                              "queues": ["vram8.tiny-sd", "vram8.smollm2-135m"], "device": DEVICE,
                              "started_at": time.time()}
    return {**fields, **changes}


def refused(model: type[BaseModel], data: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as err:
        model.model_validate(data)
    return first_error(err.value)


def test_honest_messages_pass_and_stay_small() -> None:
    c = Completion.model_validate(completion())
    signed = SignedCompletion(completion=c, signature=sign_message(WALLET, c))
    h = MinerHello.model_validate(hello())
    signed_hello = SignedHello(hello=h, signature=sign_message(WALLET, h))
    sizes = [len(json.dumps(m.model_dump(mode="json"))) for m in (signed, signed_hello)]
    assert all(size < 2000 for size in sizes), sizes  # far below the ledger's 64 KiB body limit
    Heartbeat(miner=WALLET.address, sent_at=time.time())
    TokenChunk(job_id=c.job_id, index=0, text=" Paris")
    TextOutput(text="Paris.", input_tokens=5, output_tokens=2, output_token_ids=[1, 2], finish_reason="stop")


@pytest.mark.parametrize(("field", "value", "where"), [
    ("job_id", "j" * 129, "job_id"),
    ("job_id", "", "job_id"),
    ("model_id", "m" * 65, "model_id"),
    ("content_type", "image/png" + " " * 60, "content_type"),
    ("device", {**DEVICE, "name": "n" * 257}, "device.name"),
    ("device", {**DEVICE, "kind": "k" * 65}, "device.kind"),
    ("output_bytes", 2**40 + 1, "output_bytes"),
    ("output_tokens", 2**31, "output_tokens"),
])
def test_an_oversized_completion_field_is_malformed(field: str, value: Any, where: str) -> None:
    detail = refused(Completion, completion(**{field: value}))
    assert detail.startswith(f"{where}:"), detail


def test_the_attack_7_completion_is_refused_naming_its_field() -> None:
    detail = refused(Completion, completion(content_type="x" * 8 * 2**20))  # the 8 MB field of attack 7
    assert detail == "content_type: String should have at most 64 characters"


@pytest.mark.parametrize(("field", "value", "where"), [
    ("models", ["tiny-sd"] * (MAX_LISTED + 1), "models"),
    ("models", ["m" * 65], "models.0"),
    ("queues", ["vram8.tiny-sd"] * (MAX_LISTED + 1), "queues"),
    ("queues", ["q" * 129], "queues.0"),
    ("device", {**DEVICE, "name": "n" * 8 * 2**20}, "device.name"),  # the 8 MB hello of attack 7
])
def test_an_oversized_hello_is_malformed(field: str, value: Any, where: str) -> None:
    detail = refused(MinerHello, hello(**{field: value}))
    assert detail.startswith(f"{where}:"), detail


def test_hello_limits_hold_exactly_at_the_edge() -> None:
    MinerHello.model_validate(hello(models=["m" * 64] * MAX_LISTED, queues=["q" * 128] * MAX_LISTED))
    DeviceInfo.model_validate({**DEVICE, "name": "n" * 256, "kind": "k" * 64})


def test_streamed_tokens_and_stored_answers_are_bounded() -> None:
    assert refused(TokenChunk, {"job_id": "j", "index": 0, "text": "t" * 257}).startswith("text:")
    assert refused(TokenChunk, {"job_id": "j" * 129, "index": 0, "text": "t"}).startswith("job_id:")
    answer = {"text": "a", "input_tokens": 1, "output_tokens": 1, "output_token_ids": [1], "finish_reason": "stop"}
    assert refused(TextOutput, {**answer, "text": "a" * (MAX_ANSWER_CHARS + 1)}).startswith("text:")
    ids = [1] * (MAX_ANSWER_TOKENS + 1)
    assert refused(TextOutput, {**answer, "output_token_ids": ids}).startswith("output_token_ids:")


def test_first_error_counts_the_others() -> None:
    detail = refused(Completion, completion(model_id="m" * 65, content_type="c" * 65))
    assert detail == "model_id: String should have at most 64 characters (+1 more)"


def test_the_message_byte_limit_is_a_setting_with_bounds() -> None:
    assert Settings(_env_file=None).max_message_bytes == 65_536  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="max_message_bytes"):
        Settings(_env_file=None, max_message_bytes=100)  # type: ignore[call-arg]
