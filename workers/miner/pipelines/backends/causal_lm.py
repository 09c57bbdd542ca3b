"""Causal language models through transformers (GGUF files are dequantized on load): one answer per job.

The output is a JSON ``TextOutput`` with the generated token ids, so an auditor can teacher-force them and
check the counts the ledger prices by.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    StoppingCriteria,
    StoppingCriteriaList,
    TextIteratorStreamer,
)
from transformers.generation.streamers import BaseStreamer

from heurist.catalog.schema import ModelSpec
from heurist.errors import InvalidJobError
from heurist.jobs import ImageParams, TextOutput, TextParams
from workers.miner.device import Device
from workers.miner.pipelines.backend import OnToken, Pipeline, PipelineOutput
from workers.miner.pipelines.gguf_cache import load_once

JSON = "application/json"


class StopWhen(StoppingCriteria):
    """Stop generating once the deadline passes or the caller cancels; remembers which one fired."""

    def __init__(self, deadline_at: float, cancel: threading.Event | None = None) -> None:
        self.deadline_at = deadline_at
        self.cancel = cancel
        self.deadline_hit = False

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any
    ) -> torch.BoolTensor:
        self.deadline_hit = self.deadline_hit or time.time() > self.deadline_at
        stop = self.deadline_hit or (self.cancel is not None and self.cancel.is_set())
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]


class TokenDeltas(BaseStreamer):
    """Hands each generated token and the text it adds to ``on_token``, decoding the whole answer so far.

    A token that ends inside a multi-byte character (decodes to U+FFFD) is held back until a later token
    completes it, so the deltas concatenate to exactly the final ``decode(ids)``: the stored text.
    """

    def __init__(self, tokenizer: Any, on_token: OnToken) -> None:
        self.tokenizer = tokenizer
        self.on_token = on_token
        self.ids: list[int] = []
        self.pending: list[int] = []
        self.sent = ""
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate() hands over the prompt first
            self.prompt_seen = True
            return
        for token in value.reshape(-1).tolist():
            self.ids.append(int(token))
            self.pending.append(int(token))
            self._flush(final=False)

    def end(self) -> None:
        self._flush(final=True)

    def _flush(self, final: bool) -> None:
        if not self.pending:
            return
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd") and not final:
            return
        *held, last = self.pending
        for token in held:
            self.on_token(token, "")
        delta, self.sent, self.pending = text[len(self.sent):], text, []
        self.on_token(last, delta)


def load_causal_lm(spec: ModelSpec, device: Device, root: Path, converted: Path | None = None) -> tuple[Any, Any]:
    """Tokenizer and model from ``root`` (a GGUF file in it when the source names one); never downloads.
    A GGUF is dequantized once and kept in ``converted`` for later loads (``gguf_cache``)."""
    kwargs: dict[str, Any] = {"local_files_only": True}
    dtype = torch.float16 if device.is_cuda else torch.float32

    def load(source: Path, **extra: Any) -> tuple[Any, Any]:
        tokenizer = AutoTokenizer.from_pretrained(str(source), **kwargs, **extra)
        model: Any = AutoModelForCausalLM.from_pretrained(str(source), dtype=dtype, **kwargs, **extra)
        return tokenizer, model

    if spec.source.gguf_file and converted is not None:
        tokenizer, model = load_once(converted, lambda: load(root, gguf_file=spec.source.gguf_file), load)
    else:
        tokenizer, model = load(root, **({"gguf_file": spec.source.gguf_file} if spec.source.gguf_file else {}))
    return tokenizer, model.to(device.torch_device).eval()


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    eos = model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


class CausalLMPipeline(Pipeline):
    """A loaded chat LLM serving text jobs (greedy at temperature 0, seeded sampling above)."""

    def __init__(self, spec: ModelSpec, device: Device, root: Path, converted: Path | None = None) -> None:
        self.spec = spec
        self.device = device
        self.tokenizer, self.model = load_causal_lm(spec, device, root, converted)
        self.eos_ids = _eos_ids(self.model, self.tokenizer)
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else min(self.eos_ids, default=0)

    def encode_prompt(self, prompt: str) -> list[int]:
        """The prompt as the model sees it: one user message in its chat template (raw text without one)."""
        if not self.tokenizer.chat_template:
            return list(self.tokenizer(prompt)["input_ids"])
        encoded = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True, return_dict=True
        )
        return list(encoded["input_ids"])

    def _generate_kwargs(self, params: TextParams, stop: StopWhen) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "max_new_tokens": params.max_tokens,
            "stopping_criteria": StoppingCriteriaList([stop]),
            "pad_token_id": self.pad_id,
            "eos_token_id": sorted(self.eos_ids) or None,
        }
        if params.temperature > 0:
            kwargs.update(do_sample=True, temperature=params.temperature, top_k=0, top_p=1.0)
        else:
            kwargs.update(do_sample=False, temperature=None, top_k=None, top_p=None)
        return kwargs

    def _generate(self, prompt_ids: list[int], params: TextParams, stop: StopWhen, **extra: Any) -> list[int]:
        """Generate the answer's token ids; sampling is seeded in a forked RNG (no global state changes)."""
        inputs = torch.tensor([prompt_ids], device=self.device.torch_device)
        kwargs = self._generate_kwargs(params, stop) | extra
        cuda = [torch.device(self.device.torch_device).index or 0] if self.device.is_cuda else []
        with torch.random.fork_rng(devices=cuda), torch.inference_mode():
            torch.manual_seed(params.seed)
            out = self.model.generate(input_ids=inputs, attention_mask=torch.ones_like(inputs), **kwargs)
        return [int(t) for t in out[0, len(prompt_ids):].tolist()]

    def _finish_reason(self, ids: list[int], stop: StopWhen) -> str:
        if ids and ids[-1] in self.eos_ids:
            return "stop"
        return "deadline" if stop.deadline_hit else "length"

    def complete(self, params: TextParams, deadline_at: float, on_token: OnToken | None = None) -> TextOutput:
        """Answer one prompt; past the deadline (before or during generation) the reason is ``deadline``.
        ``on_token`` gets each token as it is made, with text deltas that add up to the answer's text."""
        prompt_ids = self.encode_prompt(params.prompt)
        stop = StopWhen(deadline_at)
        if time.time() > deadline_at:
            return TextOutput(text="", input_tokens=len(prompt_ids), output_tokens=0, output_token_ids=[],
                              finish_reason="deadline")
        extra = {} if on_token is None else {"streamer": TokenDeltas(self.tokenizer, on_token)}
        ids = self._generate(prompt_ids, params, stop, **extra)
        return TextOutput(
            text=self.tokenizer.decode(ids, skip_special_tokens=True),
            input_tokens=len(prompt_ids),
            output_tokens=len(ids),
            output_token_ids=ids,
            finish_reason=self._finish_reason(ids, stop),  # type: ignore[arg-type]
        )

    def run(self, params: ImageParams | TextParams, deadline_at: float,
            on_token: OnToken | None = None) -> PipelineOutput:
        if not isinstance(params, TextParams):
            raise InvalidJobError(f"model {self.spec.id} writes text; it got a {params.kind.value} job")
        result = self.complete(params, deadline_at, on_token)
        data = json.dumps(result.model_dump(mode="json"), separators=(",", ":")).encode()
        return PipelineOutput(data=data, content_type=JSON, input_tokens=result.input_tokens,
                              output_tokens=result.output_tokens, finish_reason=result.finish_reason)

    def stream(self, params: TextParams, deadline_at: float) -> Iterator[str]:
        """Yield the answer's text as it is generated (for a streaming gateway); closing stops generation."""
        prompt_ids = self.encode_prompt(params.prompt)
        if time.time() > deadline_at:
            return
        cancel = threading.Event()
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        failure: list[BaseException] = []

        def work() -> None:
            try:
                self._generate(prompt_ids, params, StopWhen(deadline_at, cancel), streamer=streamer)
            except BaseException as err:  # re-raised in the consumer's thread below
                failure.append(err)
                streamer.end()

        thread = threading.Thread(target=work, name=f"stream-{self.spec.id}", daemon=True)
        thread.start()
        try:
            yield from (piece for piece in streamer if piece)
        finally:
            cancel.set()
            thread.join()
        if failure:
            raise failure[0]
