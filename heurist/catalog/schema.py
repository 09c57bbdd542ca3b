"""Typed model catalog entries: what a model is, where its files come from, what a job may ask of it."""

from __future__ import annotations

import re
from datetime import date as Date
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
MODEL_ID_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{0,62}$")


class Family(StrEnum):
    SD15 = "sd15"
    SDXL = "sdxl"
    LLM = "llm"


class JobKind(StrEnum):
    IMAGE = "image"
    TEXT = "text"


class VramClass(StrEnum):
    """GPU memory tiers; a model's class is the least VRAM (GB) that serves it."""

    VRAM8 = "vram8"
    VRAM12 = "vram12"
    VRAM16 = "vram16"
    VRAM24 = "vram24"
    VRAM48 = "vram48"
    VRAM80 = "vram80"

    @property
    def gb(self) -> int:
        return int(self.value.removeprefix("vram"))


class SourceKind(StrEnum):
    HF = "hf"  # a Hugging Face hub id, loaded on miners that have (or may fetch) it
    PATH = "path"  # a local directory or file
    PACKAGE = "package"  # files shipped inside an installed Python package
    BUILD = "build"  # built locally by a named builder (e.g. tiny-sd from config, fixed seed)


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class Source(Frozen):
    kind: SourceKind
    ref: str = Field(min_length=1, description="Hub id, path, package name or builder name.")
    gguf_file: str | None = Field(None, description="GGUF file inside the source, for LLMs shipped as GGUF.")
    single_file: str | None = Field(None, description="One-file checkpoint inside the source (SD .safetensors).")


class ImageLimits(Frozen):
    max_width: int = Field(gt=0, multiple_of=8)
    max_height: int = Field(gt=0, multiple_of=8)
    min_size: int = Field(64, gt=0, multiple_of=8)
    default_width: int = Field(gt=0, multiple_of=8)
    default_height: int = Field(gt=0, multiple_of=8)
    min_steps: int = Field(1, ge=1)
    max_steps: int = Field(100, ge=1)
    default_steps: int = Field(20, ge=1)
    min_guidance: float = Field(0.0, ge=0)
    max_guidance: float = Field(20.0, ge=0)
    default_guidance: float = Field(7.5, ge=0)

    @model_validator(mode="after")
    def _defaults_within_limits(self) -> ImageLimits:
        if not self.min_steps <= self.default_steps <= self.max_steps:
            raise ValueError("default_steps must lie within min_steps..max_steps")
        if not self.min_guidance <= self.default_guidance <= self.max_guidance:
            raise ValueError("default_guidance must lie within min_guidance..max_guidance")
        if self.default_width > self.max_width or self.default_height > self.max_height:
            raise ValueError("default size must not exceed max_width/max_height")
        return self


class TextLimits(Frozen):
    max_tokens: int = Field(gt=0)
    default_max_tokens: int = Field(gt=0)
    max_prompt_chars: int = Field(8000, gt=0)

    @model_validator(mode="after")
    def _default_within_limit(self) -> TextLimits:
        if self.default_max_tokens > self.max_tokens:
            raise ValueError("default_max_tokens must not exceed max_tokens")
        return self


class Deadline(Frozen):
    """A job's deadline: ``base_s + per_unit_s * units``, at most ``max_s``; a completion past it earns nothing.

    ``max_s`` keeps the longest jobs possible under the broker's ``consumer_timeout``: the catalog refuses a
    model whose deadline at its maximum limits exceeds ``Settings.max_job_deadline_s`` (heurist.catalog.loader)."""

    base_s: float = Field(gt=0)
    per_unit_s: float = Field(ge=0)
    max_s: float | None = Field(None, gt=0, description="Cap on the deadline, whatever the job's size.")

    @model_validator(mode="after")
    def _cap_above_base(self) -> Deadline:
        if self.max_s is not None and self.max_s < self.base_s:
            raise ValueError(f"max_s ({self.max_s:g}) must not be below base_s ({self.base_s:g})")
        return self

    def seconds(self, units: float) -> float:
        uncapped = self.base_s + self.per_unit_s * units
        return uncapped if self.max_s is None else min(self.max_s, uncapped)


class Benchmark(Frozen):
    """One timing of a model's reference job on one device, written by ``heurist bench models``.

    ``seconds_per_unit`` is the job's time divided by its work units (``heurist.points``), so models of one
    kind compare directly; the coefficient is that over the family reference's, timed in the same run.
    """

    device: str = Field(min_length=1, description="What ran it: 'cpu: <cpu model> x2 threads', 'cuda: <gpu name>'.")
    device_kind: Literal["cpu", "cuda"]
    date: str = Field(description="ISO date of the run (YYYY-MM-DD).")
    seconds_per_unit: float = Field(gt=0, description="Seconds per standard unit of this model's reference job.")
    reference_job: str = Field(min_length=1, description="The job that was timed.")
    family_reference: str = Field(min_length=1, description="The model defining the unit for this job kind.")
    family_reference_seconds_per_unit: float | None = Field(
        None, gt=0, description="The family reference timed in the same run; None when it is not on the machine.")
    note: str = ""

    @field_validator("date")
    @classmethod
    def _iso_date(cls, value: str) -> str:
        try:
            Date.fromisoformat(value)
        except ValueError:
            raise ValueError("must be an ISO date, YYYY-MM-DD") from None
        return value


class Units(Frozen):
    """Which catalog models define the standard unit: 1 unit = their reference job (DESIGN "Points")."""

    image_reference: str = Field("sd15", min_length=1)
    text_reference: str = Field("mixtral-8x7b", min_length=1)

    def reference_for(self, kind: JobKind) -> str:
        return self.image_reference if kind is JobKind.IMAGE else self.text_reference


class ModelSpec(Frozen):
    id: str
    family: Family
    vram: VramClass
    coefficient: float = Field(gt=0, description="Points per standard unit of work for this model.")
    coefficient_source: str = Field(min_length=1, description="The benchmark or rule that set coefficient.")
    source: Source
    files: dict[str, str] = Field(default_factory=dict, description="Relative path -> sha256 of weight files.")
    image: ImageLimits | None = None
    text: TextLimits | None = None
    deadline: Deadline
    description: str = ""
    benchmarks: list[Benchmark] = Field(
        default_factory=list, description="Timings by `heurist bench models`, one per device string.")

    @field_validator("id")
    @classmethod
    def _id_is_slug(cls, value: str) -> str:
        if not MODEL_ID_RE.match(value):
            raise ValueError("must be lowercase letters, digits, '.' or '-' (e.g. 'sd15', 'smollm2-135m')")
        return value

    @field_validator("files")
    @classmethod
    def _hashes_are_sha256(cls, value: dict[str, str]) -> dict[str, str]:
        for path, digest in value.items():
            if not SHA256_RE.match(digest):
                raise ValueError(f"sha256 of {path!r} must be 64 lowercase hex digits")
        return value

    @field_validator("benchmarks")
    @classmethod
    def _one_benchmark_per_device(cls, value: list[Benchmark]) -> list[Benchmark]:
        devices = [b.device for b in value]
        repeated = sorted({d for d in devices if devices.count(d) > 1})
        if repeated:
            raise ValueError(f"one benchmark per device: {', '.join(repeated)} appears more than once")
        return value

    @model_validator(mode="after")
    def _limits_match_family(self) -> ModelSpec:
        if self.kind is JobKind.IMAGE and self.image is None:
            raise ValueError(f"family {self.family.value} needs an [image] limits table")
        if self.kind is JobKind.TEXT and self.text is None:
            raise ValueError("family llm needs a [text] limits table")
        if self.source.kind is not SourceKind.BUILD and self.source.kind is not SourceKind.HF and not self.files:
            raise ValueError("files: local and packaged sources must pin the sha256 of their weight files")
        return self

    @property
    def kind(self) -> JobKind:
        return JobKind.TEXT if self.family is Family.LLM else JobKind.IMAGE

    @property
    def queue(self) -> str:
        """The one queue this model's jobs travel on, named by tier: ``vram8.sd15``."""
        return f"{self.vram.value}.{self.id}"

    @property
    def private_queue(self) -> str:
        return f"private.{self.queue}"

    def benchmark_for(self, device_kind: str) -> Benchmark | None:
        """The fastest benchmark recorded on this kind of device ("cpu" or "cuda"), if any."""
        runs = [b for b in self.benchmarks if b.device_kind == device_kind]
        return min(runs, key=lambda b: b.seconds_per_unit, default=None)
