"""Causal language models through transformers (GGUF files are dequantized on load): one answer per job.

The output is a JSON ``TextOutput`` with the generated token ids, so an auditor can teacher-force them and
check the counts the ledger prices by. Concurrent jobs share one ``generate`` (``run_batch``, issue 17); a job
alone is a batch of one, through the same code (``causal_lm_batch``), so its answer is the same either way.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessorList, StoppingCriteriaList

from heurist.catalog.schema import ModelSpec
from heurist.errors import InvalidJobError
from heurist.jobs import ImageParams, TextOutput, TextParams
from workers.miner.device import Device
from workers.miner.pipelines.backend import BatchItem, OnToken, Pipeline, PipelineOutput
from workers.miner.pipelines.backends.causal_lm_batch import (
    Row,
    RowStops,
    SeededSampling,
    TokenDeltas,
    left_padded,
    stream,
)
from workers.miner.pipelines.gguf_cache import load_once

JSON = "application/json"
log = logging.getLogger(__name__)

__all__ = ["CausalLMPipeline", "TokenDeltas", "load_causal_lm"]


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
    """A loaded chat LLM serving text jobs (greedy at temperature 0, seeded sampling above), several at once."""

    max_batch = 64  # rows one generate may take; the miner's HEURIST_MINER_MAX_BATCH (default 8) picks how many

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

    def _row(self, item: BatchItem) -> Row:
        if not isinstance(item.params, TextParams):
            raise InvalidJobError(f"model {self.spec.id} writes text; it got a {item.params.kind.value} job")
        deltas = None if item.on_token is None else TokenDeltas(self.tokenizer, item.on_token, prompt_seen=True)
        on_done = item.on_done
        return Row(item.params, self.encode_prompt(item.params.prompt), item.deadline_at, deltas,
                   on_done=None if on_done is None else lambda result: on_done(_as_output(result)))

    def _finish(self, row: Row) -> None:
        """``row`` stopped (``row.reason``): flush its stream, write its answer, hand it over (``on_done``)."""
        stream(row, None)
        row.output = TextOutput(text=self.tokenizer.decode(row.ids, skip_special_tokens=True),
                                input_tokens=len(row.prompt_ids), output_tokens=len(row.ids),
                                output_token_ids=list(row.ids), finish_reason=row.reason)  # type: ignore[arg-type]
        if row.on_done is not None:
            try:
                row.on_done(row.output)
            except Exception:  # the output is still returned at the batch's end
                log.warning("handing over a finished answer failed", exc_info=True)

    def generate_rows(self, rows: list[Row]) -> None:
        """Run ``rows`` to their ends in one ``generate``; a row already past its deadline ends at once, empty."""
        now = time.time()
        for row in rows:
            if now > row.deadline_at:
                row.reason = "deadline"
                self._finish(row)
        live = [row for row in rows if row.reason is None]
        if not live:
            return
        inputs, mask = left_padded(live, self.pad_id, self.device.torch_device)
        extra: dict[str, Any] = {}
        if any(row.params.temperature > 0 for row in live):
            extra["logits_processor"] = LogitsProcessorList([SeededSampling(live)])
        with torch.inference_mode():
            self.model.generate(
                input_ids=inputs, attention_mask=mask, max_new_tokens=max(row.params.max_tokens for row in live),
                stopping_criteria=StoppingCriteriaList([RowStops(live, self.eos_ids, self._finish)]),
                pad_token_id=self.pad_id, eos_token_id=sorted(self.eos_ids) or None,
                do_sample=False, temperature=None, top_k=None, top_p=None, **extra)
        for row in live:
            if row.reason is None:  # generate ended without the row's own stop (the model's length limit)
                row.reason = "length"
                self._finish(row)

    def complete(self, params: ImageParams | TextParams, deadline_at: float,
                 on_token: OnToken | None = None) -> TextOutput:
        """Answer one prompt; past the deadline (before or during generation) the reason is ``deadline``.
        ``on_token`` gets each token as it is made, with text deltas that add up to the answer's text."""
        row = self._row(BatchItem(params, deadline_at, on_token))
        self.generate_rows([row])
        assert row.output is not None
        return row.output

    def run(self, params: ImageParams | TextParams, deadline_at: float,
            on_token: OnToken | None = None) -> PipelineOutput:
        return _as_output(self.complete(params, deadline_at, on_token))

    def run_batch(self, items: list[BatchItem]) -> list[PipelineOutput | BaseException]:
        """The items' answers from one ``generate``, each as ``run`` gives it alone (``causal_lm_batch``); a
        failure of the generation is the failure of the rows it had not finished."""
        rows: dict[int, Row] = {}
        refused: dict[int, BaseException] = {}
        for i, item in enumerate(items):
            try:
                rows[i] = self._row(item)
            except Exception as err:  # this job's own failure (an image job, say)
                refused[i] = err
        failure: BaseException = RuntimeError("the batch ended before this row")
        try:
            self.generate_rows(list(rows.values()))
        except Exception as err:  # reported for each row still running
            failure = err
        return [refused[i] if i in refused else _outcome(rows[i], failure) for i in range(len(items))]

    def stream(self, params: TextParams, deadline_at: float) -> Iterator[str]:
        """Yield the answer's text as it is generated (for a streaming gateway); closing stops generation."""
        pieces: queue.Queue[str | None] = queue.Queue()
        row = self._row(BatchItem(params, deadline_at, lambda token, text: pieces.put(text)))
        failure: list[BaseException] = []

        def work() -> None:
            try:
                self.generate_rows([row])
            except BaseException as err:  # re-raised in the consumer's thread below
                failure.append(err)
            finally:
                pieces.put(None)

        thread = threading.Thread(target=work, name=f"stream-{self.spec.id}", daemon=True)
        thread.start()
        try:
            while (piece := pieces.get()) is not None:
                if piece:
                    yield piece
        finally:
            row.deadline_at = -math.inf  # the row stops at its next step
            thread.join()
        if failure:
            raise failure[0]


def _as_output(result: TextOutput) -> PipelineOutput:
    data = json.dumps(result.model_dump(mode="json"), separators=(",", ":")).encode()
    return PipelineOutput(data=data, content_type=JSON, input_tokens=result.input_tokens,
                          output_tokens=result.output_tokens, finish_reason=result.finish_reason)


def _outcome(row: Row, failure: BaseException) -> PipelineOutput | BaseException:
    return failure if row.output is None else _as_output(row.output)
