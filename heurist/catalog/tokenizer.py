"""A text model's tokenizer on the trusted side, without torch, so the ledger counts tokens itself.

Why (issue 13, finding 1). A stored answer holds its text and its token ids; ``heurist.ledger.token_counts``
makes the counts agree with the ids. Two things only the model's tokenizer can tell: that the ids decode to the
stored text (an answer cannot bill for tokens it does not show), and how many tokens the prompt is once the
model's chat template wraps it (what input is billed by). This module gives the ledger both.

Source: the model's own GGUF, hashed against the catalog's sha256 first like every model file, read with the
``gguf`` package (metadata only, no tensors: 1-5 s once per process) and rebuilt as a ``tokenizers`` byte-level
BPE whose control tokens are special; the chat template is the GGUF's own, rendered with jinja2 in a sandbox as
transformers renders it. Measured on SmolLM2-135M against the miner's transformers tokenizer: the ids of six
generated answers (accents, emoji, code, CJK) decode to exactly the miner's text, and the templated prompts
count 35, 51, 40, 43, 42 and 37 tokens on both sides. Other GGUF tokenizer kinds, and models without a GGUF,
get None: the ledger then checks counts against the stored answer only, and says so once in its log.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from heurist.catalog.attestation import sha256_file
from heurist.catalog.schema import JobKind, ModelSpec, SourceKind

log = logging.getLogger(__name__)

CONTROL = 3  # GGUF token type of control tokens (<|im_end|> …): special, skipped when decoding


@dataclass(frozen=True)
class ModelTokenizer:
    """Decode answers and count templated prompts exactly as the model's miner-side tokenizer does."""

    tokenizer: Any  # tokenizers.Tokenizer
    chat_template: str | None
    special: dict[str, str]  # bos_token, eos_token: what templates may refer to

    def decode(self, ids: list[int]) -> str:
        """The text of ``ids``, special tokens skipped (what the miner stores as the answer's text)."""
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    def prompt_tokens(self, prompt: str) -> int:
        """How many tokens the model reads for ``prompt``: one user message in its chat template."""
        if self.chat_template is None:
            return len(self.tokenizer.encode(prompt).ids)
        text = _compiled(self.chat_template).render(
            messages=[{"role": "user", "content": prompt}], add_generation_prompt=True, **self.special)
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids)


@functools.lru_cache(maxsize=16)
def _compiled(template: str) -> Any:
    """A chat template compiled once (compiling took 10 ms a completion): sandboxed, as transformers renders it."""
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    return env.from_string(template)


def _gguf_path(spec: ModelSpec, models_dir: Path | None) -> Path | None:
    name = spec.source.gguf_file
    if name is None:
        return None
    if spec.source.kind is SourceKind.PACKAGE:
        try:  # found without importing it (its __init__ may need extras)
            found = importlib.util.find_spec(spec.source.ref)
        except (ImportError, ValueError):
            found = None  # not installed here: no tokenizer, said in the log
        roots = [Path(p) for p in (found.submodule_search_locations or [])] if found else []
    else:
        roots = [Path(models_dir) / spec.id] if models_dir is not None else []
    return next((r / name for r in roots if (r / name).is_file()), None)


def _strings(reader: Any, name: str) -> list[str]:
    field = reader.fields[name]
    return [bytes(field.parts[i]).decode("utf-8") for i in field.data]


def _from_gguf(path: Path) -> ModelTokenizer | None:
    import gguf
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    reader = gguf.GGUFReader(str(path))
    kind = bytes(reader.fields["tokenizer.ggml.model"].parts[-1]).decode()
    if kind != "gpt2":  # byte-level BPE; sentencepiece kinds are not rebuilt here
        return None
    tokens, merges = _strings(reader, "tokenizer.ggml.tokens"), _strings(reader, "tokenizer.ggml.merges")
    field = reader.fields["tokenizer.ggml.token_type"]
    kinds = [int(field.parts[i][0]) for i in field.data]  # one per token
    tokenizer = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)},
                                     merges=[(a, b) for a, b in (m.split(" ", 1) for m in merges)]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(tokens[n], special=True) for n, kind in enumerate(kinds)
                                  if kind == CONTROL])
    template = reader.fields.get("tokenizer.chat_template")
    special = {}
    for role in ("bos", "eos"):
        token_id = reader.fields.get(f"tokenizer.ggml.{role}_token_id")
        if token_id is not None:
            special[f"{role}_token"] = tokens[int(token_id.parts[-1][0])]
    return ModelTokenizer(tokenizer, bytes(template.parts[-1]).decode() if template else None, special)


class TokenizerBook:
    """Each text model's tokenizer, loaded once on first use (None: the ledger cannot count that model)."""

    def __init__(self, models_dir: Path | None) -> None:
        self.models_dir = models_dir
        self._loaded: dict[str, ModelTokenizer | None] = {}
        self._lock = threading.Lock()

    def __call__(self, spec: ModelSpec) -> ModelTokenizer | None:
        with self._lock:
            if spec.id not in self._loaded:
                self._loaded[spec.id] = self._load(spec)
            return self._loaded[spec.id]

    def _load(self, spec: ModelSpec) -> ModelTokenizer | None:
        path = _gguf_path(spec, self.models_dir) if spec.kind is JobKind.TEXT else None
        pinned = spec.files.get(spec.source.gguf_file or "")
        if path is None or pinned is None or sha256_file(path) != pinned:
            log.warning("model %s: no verified tokenizer on this ledger; its token counts are checked against "
                        "the stored answer only", spec.id)
            return None
        found = _from_gguf(path)
        if found is None:
            log.warning("model %s: its GGUF tokenizer kind is not rebuilt here; token counts are checked "
                        "against the stored answer only", spec.id)
        return found


__all__ = ["ModelTokenizer", "TokenizerBook"]
