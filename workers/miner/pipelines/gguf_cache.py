"""Dequantize a GGUF model once per machine, then load the result: an LLM miner restarts in seconds.

transformers reads a GGUF through gguf-py, which parses the whole file three times (tokenizer, config,
weights) and builds a tensor-name map once per tensor. SmolLM2-135M Q4_1 (a 105 MB file) took 36.4 s to
load on a 2-core CPU, of which 3.3 s was the dequantizing itself. Every miner restart, every auditor start
and every test network paid that. So the first load saves what it produced (config, tokenizer, and the
weights as safetensors in the dtype they were loaded in: what dequantizing gave, bit for bit) in
``<models_dir>/.converted/<model>-<attestation[:16]>-<dtype>/``, and later loads read that directory:
1.5 s instead of 36.3 s for SmolLM2-135M (542 MB in float32), with identical tensors, tokens and answers
(tests/test_gguf_cache.py).

- **Keyed by the attestation** of the verified GGUF (``weights_digest``), so a changed GGUF never meets a
  stale conversion, and by dtype (float32 on CPU, float16 on CUDA).
- **Never half a conversion.** It is written under a temporary name with a manifest of its files' sha256,
  then renamed into place; two processes converting at once keep the first rename. Every load checks the
  manifest first (0.5 s for 540 MB) and rebuilds a damaged or edited directory from the GGUF.
- **Nothing is trusted from it that was not trusted before.** It lives on the miner's own disk, derived from
  files verified against the catalog a moment earlier; what a miner computes is still judged by the audit,
  and the attestation a miner signs is still the GGUF's.
- **Optional by construction:** when the directory cannot be written (read-only, disk full) the model loads
  from the GGUF as before, with a warning. Delete ``.converted`` to reclaim the space.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from workers.miner.model_files import hash_tree

MANIFEST = "heurist-manifest.json"
log = logging.getLogger(__name__)


def conversion_dir(models_dir: Path, model_id: str, attestation: str, dtype: str) -> Path:
    """Where ``model_id`` dequantized from the GGUF attested ``attestation`` is kept, for one dtype."""
    return models_dir / ".converted" / f"{model_id}-{attestation[:16]}-{dtype}"


def is_intact(directory: Path) -> bool:
    """True when ``directory`` holds exactly the files its manifest names, each with its sha256."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    files = hash_tree(directory)
    files.pop(MANIFEST, None)
    return isinstance(manifest, dict) and bool(manifest) and files == manifest


def load_once(directory: Path, load_source: Callable[[], tuple[Any, Any]],
              load_converted: Callable[[Path], tuple[Any, Any]]) -> tuple[Any, Any]:
    """``(tokenizer, model)``: ``load_converted(directory)`` when an intact conversion is there, else
    ``load_source()`` (the GGUF), whose result is then saved to ``directory`` for the next start."""
    if is_intact(directory):
        return load_converted(directory)
    tokenizer, model = load_source()
    try:
        _save(directory, tokenizer, model)
    except OSError as err:  # a read-only or full disk costs speed, never the model
        log.warning("could not keep the dequantized model in %s (%s): the next start reads the GGUF again",
                    directory, err)
    return tokenizer, model


def _save(directory: Path, tokenizer: Any, model: Any) -> None:
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = directory.with_name(f"{directory.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        _save_model(staging, model)
        tokenizer.save_pretrained(staging)
        (staging / MANIFEST).write_text(json.dumps(hash_tree(staging), indent=1, sort_keys=True))
        if directory.exists() and not is_intact(directory):
            shutil.rmtree(directory)  # damaged: replaced by the fresh conversion
        try:
            staging.rename(directory)
        except OSError:
            if not is_intact(directory):  # not a concurrent winner's intact copy: a real failure
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("kept the dequantized model in %s for later starts", directory)


def _save_model(staging: Path, model: Any) -> None:
    """Weights, config and generation config in the layout ``from_pretrained`` reads. (transformers refuses
    ``save_pretrained`` on a GGUF-loaded model, which it marks as quantized although its weights are plain
    tensors by now; the config loses that mark too, or the next load would look for a GGUF.)"""
    from safetensors.torch import save_model

    staging.mkdir(parents=True)
    save_model(model, str(staging / "model.safetensors"), metadata={"format": "pt"})  # shared tensors once
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    (staging / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    model.generation_config.save_pretrained(staging)
