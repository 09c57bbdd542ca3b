"""Cheating pipelines, for the audit's tests and `heurist demo --with-cheater` only.

Each wraps an honest pipeline and cheats one way the seed names: a random image, fewer steps, a different
seed, garbage text, a truncated answer. A miner runs one only when started with the hidden ``--cheat``.
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import Callable
from dataclasses import dataclass

from heurist.errors import ConfigError
from heurist.jobs import ImageParams, TextParams
from workers.pipelines.backend import Pipeline, PipelineOutput


@dataclass
class Cheat(Pipeline):
    """An honest pipeline with one dishonest step."""

    honest: Pipeline
    how: Callable[[Pipeline, ImageParams | TextParams, float], PipelineOutput]

    def __post_init__(self) -> None:
        self.spec = self.honest.spec

    def run(self, params: ImageParams | TextParams, deadline_at: float) -> PipelineOutput:
        return self.how(self.honest, params, deadline_at)


def _random_image(honest: Pipeline, params: ImageParams | TextParams, deadline_at: float) -> PipelineOutput:
    from PIL import Image

    assert isinstance(params, ImageParams)
    rng = random.Random(params.seed)
    image = Image.frombytes("RGB", (params.width, params.height), rng.randbytes(params.width * params.height * 3))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return PipelineOutput(buf.getvalue(), "image/png")


def _fewer_steps(honest: Pipeline, params: ImageParams | TextParams, deadline_at: float) -> PipelineOutput:
    assert isinstance(params, ImageParams)
    return honest.run(params.model_copy(update={"steps": max(1, params.steps // 4)}), deadline_at)


def _other_seed(honest: Pipeline, params: ImageParams | TextParams, deadline_at: float) -> PipelineOutput:
    assert isinstance(params, ImageParams)
    return honest.run(params.model_copy(update={"seed": (params.seed + 1) % 2**32}), deadline_at)


def _garbage_text(honest: Pipeline, params: ImageParams | TextParams, deadline_at: float) -> PipelineOutput:
    real = honest.run(params, deadline_at)
    output = json.loads(real.data)
    rng = random.Random(len(output["output_token_ids"]))
    output["output_token_ids"] = [rng.randrange(1000, 40000) for _ in output["output_token_ids"]]
    output["text"] = "lorem ipsum " * max(1, len(output["output_token_ids"]) // 2)
    return PipelineOutput(json.dumps(output).encode(), real.content_type, real.input_tokens, real.output_tokens)


CHEATS: dict[str, Callable[[Pipeline, ImageParams | TextParams, float], PipelineOutput]] = {
    "random-image": _random_image,
    "fewer-steps": _fewer_steps,
    "other-seed": _other_seed,
    "garbage-text": _garbage_text,
}


def cheating(pipelines: dict[str, Pipeline], how: str) -> dict[str, Pipeline]:
    """Wrap every pipeline of the kind ``how`` applies to (image cheats on image models, text on text)."""
    if how not in CHEATS:
        raise ConfigError(f"unknown cheat {how!r}: one of {', '.join(CHEATS)}")
    kind = "text" if how.endswith("-text") else "image"
    return {mid: Cheat(p, CHEATS[how]) if p.spec.kind.value == kind else p for mid, p in pipelines.items()}
