"""Stable Diffusion 1.5 / SDXL through diffusers: one image per job, seeded on the CPU so audits replay it.

Concurrent jobs of one size, steps and guidance share one diffusers call (``run_batch``), each image
byte-identical to its render alone (``diffusion_batch``); a batch of 4 tiny-sd jobs ran about 1.5x as fast
as 4 one after another on this 2-core CPU (``workers.bench.image_batching``).
"""

from __future__ import annotations

import io
import time
from collections.abc import Hashable
from pathlib import Path
from typing import Any, cast

import torch

from heurist.catalog.schema import Family, ModelSpec
from heurist.errors import InvalidJobError
from heurist.jobs import ImageParams, TextParams
from workers.miner.device import Device
from workers.miner.pipelines.backend import BatchItem, DeadlineExceeded, OnToken, Pipeline, PipelineOutput
from workers.miner.pipelines.backends.diffusion_batch import BatchDeadlines, JobRows, image_batch_key, per_job_linears

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

    max_batch = 4  # measured: 4 tiny-sd jobs in one call, same bytes, about 1.5x the throughput on 2 CPU cores

    def __init__(self, spec: ModelSpec, device: Device, root: Path) -> None:
        self.spec = spec
        self.device = device
        self.pipe = load_diffusers(spec, device, root)
        # a batch's images the same bytes as alone (diffusion_batch); a job alone runs exactly as before
        self.pipe.vae.enable_slicing()
        self.rows = JobRows()
        per_job_linears([m for m in (self.pipe.unet, self.pipe.text_encoder, getattr(self.pipe, "text_encoder_2", None))
                         if m is not None], self.rows)

    def _image_params(self, params: ImageParams | TextParams) -> ImageParams:
        if not isinstance(params, ImageParams):
            raise InvalidJobError(f"model {self.spec.id} makes images; it got a {params.kind.value} job")
        return params

    def run(self, params: ImageParams | TextParams, deadline_at: float,
            on_token: OnToken | None = None) -> PipelineOutput:
        """Denoise one image; raise ``DeadlineExceeded`` between steps once ``deadline_at`` has passed."""
        params = self._image_params(params)
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

    def batch_key(self, params: ImageParams | TextParams) -> Hashable:
        return image_batch_key(params)

    def run_batch(self, items: list[BatchItem]) -> list[PipelineOutput | BaseException]:
        """Jobs with equal ``batch_key`` in one call; a job refused or already late fails alone, one left runs as
        ``run``; a job whose deadline passes mid-call gets ``DeadlineExceeded`` (at once through its ``on_fail``),
        its batch mates their images."""
        outputs: list[PipelineOutput | BaseException | None] = [None] * len(items)
        live: list[int] = []
        for i, item in enumerate(items):
            try:
                self._image_params(item.params)
                _check_deadline(item.deadline_at, "before starting")
                live.append(i)
            except Exception as err:  # this job's own failure, reported for it alone (and at once)
                outputs[i] = err
                if item.on_fail is not None:
                    item.on_fail(err)
        if len(live) == 1:
            outputs[live[0]] = super().run_batch([items[live[0]]])[0]
        elif live:
            for i, output in zip(live, self._render([items[i] for i in live]), strict=True):
                outputs[i] = output
        return cast(list[PipelineOutput | BaseException], outputs)

    def _render(self, items: list[BatchItem]) -> list[PipelineOutput | BaseException]:
        params = [cast(ImageParams, item.params) for item in items]
        first = params[0]  # equal batch keys: the same size, steps, guidance and negative prompt presence
        deadlines = BatchDeadlines([item.deadline_at for item in items], first.steps, [item.on_fail for item in items])
        self.rows.jobs = len(items)
        try:
            result = self.pipe(
                prompt=[p.prompt for p in params],
                negative_prompt=[p.negative_prompt for p in params] if first.negative_prompt else None,
                width=first.width,
                height=first.height,
                num_inference_steps=first.steps,
                guidance_scale=first.guidance,
                generator=[torch.Generator(device="cpu").manual_seed(p.seed) for p in params],
                output_type="pil",
                callback_on_step_end=deadlines.on_step_end,
            )
        except DeadlineExceeded as every:  # all late: each job gets its own reason
            return [deadlines.late.get(i, every) for i in range(len(items))]
        finally:
            self.rows.jobs = 0
        return [deadlines.late.get(i) or PipelineOutput(data=png_bytes(image), content_type=PNG)
                for i, image in enumerate(result.images)]


def _check_deadline(deadline_at: float, when: str) -> None:
    late = time.time() - deadline_at
    if late > 0:
        raise DeadlineExceeded(f"image job stopped {when}: {late:.1f}s past its time limit")
