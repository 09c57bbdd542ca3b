"""Pipeline registry: verify a model's files, then load the backend its family needs.

Backends import torch, diffusers and transformers only when a model of theirs is loaded, so importing
this package (e.g. for ``BUILDERS`` in the CLI) stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from heurist.catalog.attestation import weights_digest
from heurist.catalog.schema import Family, ModelSpec
from workers.miner.device import Device
from workers.miner.model_files import expected_hashes, verify_model_files
from workers.miner.pipelines.backend import DeadlineExceeded, Pipeline, PipelineOutput
from workers.miner.pipelines.gguf_cache import conversion_dir
from workers.miner.tiny_sd import build_tiny_sd

Builder = Callable[[Path], dict[str, str]]

BUILDERS: dict[str, Builder] = {"tiny-sd": build_tiny_sd}


def _load_diffusion(spec: ModelSpec, device: Device, root: Path, converted: Path) -> Pipeline:
    from workers.miner.pipelines.backends.diffusion import DiffusionPipeline

    return DiffusionPipeline(spec, device, root)


def _load_causal_lm(spec: ModelSpec, device: Device, root: Path, converted: Path) -> Pipeline:
    from workers.miner.pipelines.backends.causal_lm import CausalLMPipeline

    return CausalLMPipeline(spec, device, root, converted)


# (spec, device, the verified files' directory, where a loader may keep a conversion of them: gguf_cache)
LOADERS: dict[Family, Callable[[ModelSpec, Device, Path, Path], Pipeline]] = {
    Family.SD15: _load_diffusion,
    Family.SDXL: _load_diffusion,
    Family.LLM: _load_causal_lm,
}


def load_pipeline(spec: ModelSpec, device: Device, models_dir: Path) -> Pipeline:
    """Verify ``spec``'s files against their pinned sha256 (``ModelIntegrityError`` if not), then load it."""
    root = verify_model_files(spec, models_dir)
    attestation = weights_digest(expected_hashes(spec, models_dir))  # verified equal just now
    converted = conversion_dir(models_dir, spec.id, attestation, "float16" if device.is_cuda else "float32")
    pipeline = LOADERS[spec.family](spec, device, root, converted)
    pipeline.weights_sha256 = attestation
    return pipeline


__all__ = ["BUILDERS", "LOADERS", "DeadlineExceeded", "Pipeline", "PipelineOutput", "load_pipeline"]
