"""Stable Diffusion 1.5 / SDXL through diffusers: one image per job, seeded on the CPU so audits replay it."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import torch

from heurist.catalog.schema import Family, ModelSpec
from heurist.errors import InvalidJobError
from heurist.jobs import ImageParams, TextParams
from workers.miner.device import Device
from workers.miner.pipelines.backend import DeadlineExceeded, OnToken, Pipeline, PipelineOutput

PNG = "image/png"


def _pipeline_class(family: Family) -> Any:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    if family is Family.SDXL:
        return StableDiffusionXLPipeline
    if family is Family.SD15:
        return StableDiffusionPipeline
    raise InvalidJobError(f"family {family.value} is not a diffusion model")


def load_diffusers(spec: ModelSpec, device: Device, root: Path) -> Any:
    """Load from a diffusers directory, or from ``single_file`` (configs from ``root`` when it has them)."""
    cls = _pipeline_class(spec.family)
    dtype = torch.float16 if device.is_cuda else torch.float32
    kwargs: dict[str, Any] = {"dtype": dtype, "local_files_only": True}
    if spec.family is Family.SD15:  # no NSFW checker: it would cost VRAM and blank images an auditor replays
        kwargs.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    single = spec.source.single_file
    if single:
        config = str(root) if (root / "model_index.json").is_file() else None
        pipe = cls.from_single_file(str(root / single), config=config, **kwargs)
    else:
        pipe = cls.from_pretrained(str(root), **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device.torch_device)


def png_bytes(image: Any) -> bytes:
    """Encode a PIL image as PNG with no metadata: same pixels, same bytes (the output's sha256 is signed)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


class DiffusionPipeline(Pipeline):
    """A loaded SD1.5/SDXL pipeline serving image jobs."""

    def __init__(self, spec: ModelSpec, device: Device, root: Path) -> None:
        self.spec = spec
        self.device = device
        self.pipe = load_diffusers(spec, device, root)

    def run(self, params: ImageParams | TextParams, deadline_at: float,
            on_token: OnToken | None = None) -> PipelineOutput:
        """Denoise one image; raise ``DeadlineExceeded`` between steps once ``deadline_at`` has passed."""
        if not isinstance(params, ImageParams):
            raise InvalidJobError(f"model {self.spec.id} makes images; it got a {params.kind.value} job")
        _check_deadline(deadline_at, "before starting")

        def on_step_end(pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            _check_deadline(deadline_at, f"after step {step + 1} of {params.steps}")
            return kwargs

        generator = torch.Generator(device="cpu").manual_seed(params.seed)
        result = self.pipe(
            prompt=params.prompt,
            negative_prompt=params.negative_prompt or None,
            width=params.width,
            height=params.height,
            num_inference_steps=params.steps,
            guidance_scale=params.guidance,
            generator=generator,
            output_type="pil",
            callback_on_step_end=on_step_end,
        )
        return PipelineOutput(data=png_bytes(result.images[0]), content_type=PNG)


def _check_deadline(deadline_at: float, when: str) -> None:
    late = time.time() - deadline_at
    if late > 0:
        raise DeadlineExceeded(f"image job stopped {when}: {late:.1f}s past its time limit")
