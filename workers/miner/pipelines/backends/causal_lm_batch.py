"""One ``generate`` call for several text jobs (issue 17): each row keeps its own end, seed, stream and output.

On this 2-core CPU, SmolLM2-135M made 8 answers of 64 tokens 3.5-3.9x faster in one left-padded batch than one
after another on 2 torch threads, 4.5-6.4x on 1 (``heurist bench batching``): a step for 8 rows cost about twice
a step for 1, most of its time going in reading the weights. What a job sees must not depend on its batch mates, so:

- Greedy rows are token-for-token the answers decoded alone: prompts are left-padded with attention masks, from
  which ``generate`` derives each row's positions, in float32 (checked in tests/test_llm_batching.py).
- Sampled rows draw from their own ``torch.Generator`` seeded with the job's seed (``SeededSampling``), one draw
  per step, so a seed gives the same answer alone or in any batch. The single-job path samples the same way.
- Each row stops on its own (``RowStops``): its end-of-sequence token, its ``max_tokens``, its deadline. A row that
  stops is final at once: its last deltas are flushed, ``on_done`` hands its output to its job's thread (to be
  stored before its deadline while the others go on), and nothing it computes after is kept or streamed.
  ``generate`` still computes stopped rows as padding until the batch's last row stops; rows cannot join a
  running batch (no continuous batching): jobs arriving meanwhile form the next batch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import LogitsProcessor, StoppingCriteria
from transformers.generation.streamers import BaseStreamer

from heurist.jobs import TextOutput, TextParams
from workers.miner.pipelines.backend import OnToken

log = logging.getLogger(__name__)


@dataclass
class Row:
    """One job of a batch: its prompt, the tokens made so far, and why it stopped (None: still running)."""

    params: TextParams
    prompt_ids: list[int]
    deadline_at: float  # the consumer of ``stream`` moves it to -inf to stop the row at its next step
    deltas: TokenDeltas | None = None  # the job's stream, if it asked for one
    on_done: Callable[[TextOutput], None] | None = None  # handed the answer the moment the row stops
    ids: list[int] = field(default_factory=list)
    reason: str | None = None
    output: TextOutput | None = None


class SeededSampling(LogitsProcessor):
    """Draw each sampled row's token with its job's own generator and make it the row's argmax (``generate``
    then runs greedy for the whole batch); greedy rows (temperature 0) pass through unchanged.

    Pure temperature sampling (no top-k, no top-p), as the auditor's check assumes: one uniform draw per step
    inverted through the row's cumulative distribution (in float64), so a row's draws never depend on the
    other rows. (Its logits may differ from the row's alone in the last float bits; a draw would have to land
    that close to a boundary between two tokens to pick another one.)"""

    def __init__(self, rows: list[Row]) -> None:
        self.rows = [(i, row.params.temperature, torch.Generator(device="cpu").manual_seed(row.params.seed))
                     for i, row in enumerate(rows) if row.params.temperature > 0]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for i, temperature, generator in self.rows:
            cdf = torch.softmax(scores[i].double().cpu() / temperature, dim=-1).cumsum(0)
            draw = torch.rand((), generator=generator, dtype=torch.float64) * cdf[-1]
            token = min(int(torch.searchsorted(cdf, draw, right=True)), cdf.numel() - 1)
            scores[i] = -torch.inf
            scores[i, token] = 0.0
        return scores


class RowStops(StoppingCriteria):
    """Called by ``generate`` after each step with every row's new token: keeps and streams the running rows'
    tokens, stops each row at its own end, and ``finish``es it there (returning a per-row BoolTensor)."""

    def __init__(self, rows: list[Row], eos_ids: set[int], finish: Callable[[Row], None]) -> None:
        self.rows, self.eos_ids, self.finish = rows, eos_ids, finish

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        now = time.time()
        for row, token in zip(self.rows, input_ids[:, -1].tolist(), strict=True):
            if row.reason is not None:
                continue
            row.ids.append(int(token))
            stream(row, int(token))
            if token in self.eos_ids:
                row.reason = "stop"
            elif len(row.ids) >= row.params.max_tokens:
                row.reason = "length"
            elif now > row.deadline_at:
                row.reason = "deadline"
            if row.reason is not None:
                self.finish(row)
        done = [row.reason is not None for row in self.rows]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]


def stream(row: Row, token: int | None) -> None:
    """Hand ``token`` to the row's stream (None: the row's end, flush it); a failing callback stops that row's
    stream only, never the batch."""
    if row.deltas is None:
        return
    try:
        row.deltas.end() if token is None else row.deltas.add(token)
    except Exception:
        log.warning("a token callback failed; that job's stream stops, the batch goes on", exc_info=True)
        row.deltas = None


class TokenDeltas(BaseStreamer):
    """Hands each generated token and the text it adds to ``on_token``, decoding the whole answer so far.

    A token that ends inside a multi-byte character (decodes to U+FFFD) is held back until a later token
    completes it, so the deltas concatenate to exactly the final ``decode(ids)``: the stored text.
    """

    def __init__(self, tokenizer: Any, on_token: OnToken, prompt_seen: bool = False) -> None:
        self.tokenizer = tokenizer
        self.on_token = on_token
        self.ids: list[int] = []
        self.pending: list[int] = []
        self.sent = ""
        self.prompt_seen = prompt_seen

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate() hands over the prompt first
            self.prompt_seen = True
            return
        for token in value.reshape(-1).tolist():
            self.add(int(token))

    def add(self, token: int) -> None:
        self.ids.append(token)
        self.pending.append(token)
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


def left_padded(rows: list[Row], pad_id: int, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows' prompts left-padded to one width, and the attention mask that hides the padding."""
    width = max(len(row.prompt_ids) for row in rows)
    ids = [[pad_id] * (width - len(row.prompt_ids)) + row.prompt_ids for row in rows]
    mask = [[0] * (width - len(row.prompt_ids)) + [1] * len(row.prompt_ids) for row in rows]
    return torch.tensor(ids, device=device), torch.tensor(mask, device=device)
