"""Cheating miners, for the audit's tests and `heurist demo --with-cheater` only.

One cheat per kind the seed names, each a small change to an honest miner and each a miner middleware:
a pipeline wrapper applied by the load-time hook (what is computed) or a lie in ``after_job`` (what is
claimed about it). The production miner never imports this; ``workers.testing.cheater`` starts the same
miner with one cheat added. Which check catches each is the cheater suite's business (tests/test_cheaters.py).
"""

from __future__ import annotations

import copy
import io
import json
import random
from collections.abc import Callable
from dataclasses import dataclass

from heurist.catalog import JobKind
from heurist.catalog.attestation import weights_digest
from heurist.errors import ConfigError
from heurist.jobs import Completion, DeviceInfo, ImageParams, JobMessage, TextParams
from workers.miner.middleware import Middleware, wrap_pipelines
from workers.miner.pipelines.backend import OnToken, Pipeline, PipelineOutput
from workers.testing.faults import FAULTS

Params = ImageParams | TextParams
Run = Callable[[Pipeline, Params, float], PipelineOutput]


@dataclass
class Rigged(Pipeline):
    """An honest pipeline with one dishonest step; it attests the honest pipeline's weights. It keeps
    ``Pipeline.max_batch`` 1: each job goes through its dishonest step alone (``run_batch`` calls ``run``)."""

    honest: Pipeline
    how: Run

    def __post_init__(self) -> None:
        self.spec = self.honest.spec
        self.weights_sha256 = self.honest.weights_sha256

    def run(self, params: Params, deadline_at: float, on_token: OnToken | None = None) -> PipelineOutput:
        return self.how(self.honest, params, deadline_at)  # cheats stream nothing: chunks are only previews


def _png(image: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")  # type: ignore[attr-defined]
    return buf.getvalue()


def _random_image(honest: Pipeline, params: Params, deadline_at: float) -> PipelineOutput:
    from PIL import Image

    assert isinstance(params, ImageParams)
    rng = random.Random(params.seed)
    image = Image.frombytes("RGB", (params.width, params.height), rng.randbytes(params.width * params.height * 3))
    return PipelineOutput(_png(image), "image/png")


def _not_an_image(honest: Pipeline, params: Params, deadline_at: float) -> PipelineOutput:
    """Does the work (its timings are honest), then stores bytes no image decoder reads as the PNG: the audit
    used to raise on them and record nothing (issue 13, finding 3)."""
    real = honest.run(params, deadline_at)
    return PipelineOutput(b"%PDF-1.4 " + real.data[8:64], "image/png")


def _fewer_steps(honest: Pipeline, params: Params, deadline_at: float) -> PipelineOutput:
    assert isinstance(params, ImageParams)
    return honest.run(params.model_copy(update={"steps": max(1, params.steps // 4)}), deadline_at)


def _other_seed(honest: Pipeline, params: Params, deadline_at: float) -> PipelineOutput:
    assert isinstance(params, ImageParams)
    return honest.run(params.model_copy(update={"seed": (params.seed + 1) % 2**32}), deadline_at)


def _low_res(honest: Pipeline, params: Params, deadline_at: float) -> PipelineOutput:
    """A cheaper computation passed off as the model's: half the size, upscaled (a quarter of the work)."""
    from PIL import Image

    assert isinstance(params, ImageParams)
    small = params.model_copy(update={"width": max(32, params.width // 2), "height": max(32, params.height // 2)})
    with Image.open(io.BytesIO(honest.run(small, deadline_at).data)) as image:
        return PipelineOutput(_png(image.resize((params.width, params.height), Image.Resampling.BICUBIC)),
                              "image/png")


def _edit_text(honest: Pipeline, params: Params, deadline_at: float,
               edit: Callable[[dict[str, object]], None]) -> PipelineOutput:
    real = honest.run(params, deadline_at)
    output = json.loads(real.data)
    edit(output)
    return PipelineOutput(json.dumps(output).encode(), real.content_type, real.input_tokens,
                          int(output["output_tokens"]))


def _garble(output: dict[str, object]) -> None:
    ids = list(output["output_token_ids"])  # type: ignore[call-overload]
    rng = random.Random(len(ids))
    output["output_token_ids"] = [rng.randrange(1000, 40000) for _ in ids]
    output["text"] = "lorem ipsum " * max(1, len(ids) // 2)


def _truncate(output: dict[str, object]) -> None:
    """Keep the first quarter of the answer and call it finished, claiming the full token count."""
    ids = list(output["output_token_ids"])  # type: ignore[call-overload]
    output["output_token_ids"] = ids[: max(1, len(ids) // 4)]
    output["text"] = str(output["text"])[: max(1, len(str(output["text"])) // 4)]
    output["finish_reason"] = "stop"


def _garbage_text(honest: Pipeline, params: Params, deadline_at: float) -> PipelineOutput:
    return _edit_text(honest, params, deadline_at, _garble)


def _truncated_text(honest: Pipeline, params: Params, deadline_at: float) -> PipelineOutput:
    return _edit_text(honest, params, deadline_at, _truncate)


def perturbed(honest: Pipeline, scale: float = 0.1, seed: int = 0) -> Pipeline:
    """A copy of ``honest`` whose weight matrices carry Gaussian noise (``scale`` of each one's std): a
    different, cheaper or tampered model behind the same interface. The honest pipeline is untouched.

    At 5% noise SmolLM2 still gave the honest answer to 1 prompt in 10 (nothing to catch, nothing gained);
    at 10% every answer measured changed."""
    import torch

    cheap = copy.deepcopy(honest)
    generator = torch.Generator().manual_seed(seed)
    modules = [m for m in vars(cheap).values() if isinstance(m, torch.nn.Module)]
    pipe = getattr(cheap, "pipe", None)
    if pipe is not None:
        modules += [m for m in pipe.components.values() if isinstance(m, torch.nn.Module)]
    with torch.no_grad():
        for module in modules:
            for weight in module.parameters():
                if weight.dim() >= 2 and weight.is_floating_point():
                    noise = torch.randn(weight.shape, generator=generator, dtype=weight.dtype)
                    weight.add_(noise.to(weight.device) * weight.std() * scale)
    return cheap


def _tampered_weights(honest: Pipeline) -> Pipeline:
    """Modified weights, attesting the pinned ones: only the replay can tell."""
    return perturbed(honest)


def _modified_weights(honest: Pipeline) -> Pipeline:
    """Modified weights, attesting what it really loaded: the attestation itself gives it away."""
    cheap = perturbed(honest)
    cheap.weights_sha256 = weights_digest({"model.safetensors (modified)": honest.weights_sha256})
    return cheap


class FakeLatency(Middleware):
    """Reports fifty times faster than it ran (a miner showing off for routing or reward tiers)."""

    def after_job(self, job: JobMessage, completion: Completion) -> Completion:
        t = completion.timings
        fast = t.model_copy(update={"run_s": t.run_s / 50, "total_s": t.run_s / 50 + t.upload_s})
        return completion.model_copy(update={"timings": fast})


class InflatedTokens(Middleware):
    """Stores the honest answer and claims ten times its tokens (issue 13, finding 1: credited 13x before)."""

    def after_job(self, job: JobMessage, completion: Completion) -> Completion:
        if not isinstance(job.params, TextParams):
            return completion
        return completion.model_copy(update={"input_tokens": completion.input_tokens * 10,
                                             "output_tokens": completion.output_tokens * 10})


class FakeDevice(Middleware):
    """Claims a data-centre GPU while running on whatever it has."""

    CLAIMED = DeviceInfo(kind="cuda", name="NVIDIA H100 80GB HBM3", vram_gb=80.0)

    def after_job(self, job: JobMessage, completion: Completion) -> Completion:
        return completion.model_copy(update={"device": self.CLAIMED})


class PipelineCheat(Middleware):
    """A cheat in what is computed: at load time, the pipelines of its kind (None: all) are replaced."""

    def __init__(self, kind: JobKind | None, wrap: Callable[[Pipeline], Pipeline]) -> None:
        self.kind = kind
        self.wrap = wrap

    def wrap_pipelines(self, pipelines: dict[str, Pipeline]) -> dict[str, Pipeline]:
        return {mid: self.wrap(p) if self.kind in (None, p.spec.kind) else p for mid, p in pipelines.items()}


@dataclass(frozen=True)
class CheatSpec:
    """Which models a cheat touches (``kind`` None: all) and how: a new pipeline or a lying middleware."""

    kind: JobKind | None
    wrap: Callable[[Pipeline], Pipeline] | None = None
    middleware: Callable[[], Middleware] | None = None

    def make(self) -> Middleware:
        """The middleware that makes an honest miner cheat this way."""
        if self.middleware is not None:
            return self.middleware()
        assert self.wrap is not None, "a cheat either wraps pipelines or lies in a middleware"
        return PipelineCheat(self.kind, self.wrap)


def _rigged(how: Run) -> Callable[[Pipeline], Pipeline]:
    return lambda honest: Rigged(honest, how)


CHEATS: dict[str, CheatSpec] = {
    "random-image": CheatSpec(JobKind.IMAGE, _rigged(_random_image)),
    "not-an-image": CheatSpec(JobKind.IMAGE, _rigged(_not_an_image)),
    "fewer-steps": CheatSpec(JobKind.IMAGE, _rigged(_fewer_steps)),
    "other-seed": CheatSpec(JobKind.IMAGE, _rigged(_other_seed)),
    "low-res": CheatSpec(JobKind.IMAGE, _rigged(_low_res)),
    "garbage-text": CheatSpec(JobKind.TEXT, _rigged(_garbage_text)),
    "truncated-text": CheatSpec(JobKind.TEXT, _rigged(_truncated_text)),
    "tampered-weights": CheatSpec(None, _tampered_weights),
    "modified-weights": CheatSpec(None, _modified_weights),
    "fake-latency": CheatSpec(None, middleware=FakeLatency),
    "fake-device": CheatSpec(None, middleware=FakeDevice),
    "inflated-tokens": CheatSpec(JobKind.TEXT, middleware=InflatedTokens),
}


def cheat_middleware(how: str) -> Middleware:
    """The middleware of the cheat named ``how`` (one of ``CHEATS``), or of a fault (``workers.testing.faults``:
    not a cheat, so never in the cheater suite's ``CHEATS``)."""
    spec = CHEATS.get(how)
    if spec is not None:
        return spec.make()
    fault = FAULTS.get(how)
    if fault is None:
        raise ConfigError(f"unknown cheat {how!r}: one of {', '.join(CHEATS)}, or a fault: {', '.join(FAULTS)}")
    return fault()


def cheating(pipelines: dict[str, Pipeline], how: str) -> tuple[dict[str, Pipeline], list[Middleware]]:
    """What a cheater's runtime is built from, as ``workers.miner.launch.serve`` builds it: the pipelines
    after the cheat's load-time hook, and the cheat's middleware."""
    cheat = cheat_middleware(how)
    return wrap_pipelines(pipelines, [cheat]), [cheat]
