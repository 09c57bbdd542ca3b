"""The catalog loads, and bad entries fail at load naming the entry and the field."""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path

import pytest

from heurist.catalog import Family, JobKind, VramClass, load_catalog
from heurist.catalog.loader import parse_catalog
from heurist.errors import CatalogError, UnknownModelError


def shipped() -> dict:
    return tomllib.loads(resources.files("heurist.catalog").joinpath("models.toml").read_text())


def test_shipped_catalog_has_the_seed_models() -> None:
    catalog = load_catalog()
    assert catalog["sd15"].vram is VramClass.VRAM8 and catalog["sd15"].family is Family.SD15
    assert catalog["sdxl"].vram is VramClass.VRAM12
    assert catalog["mixtral-8x7b"].vram.gb >= 24
    assert catalog["smollm2-135m"].kind is JobKind.TEXT
    assert catalog["smollm2-135m"].source.gguf_file
    assert catalog["tiny-sd"].source.kind.value == "build"
    assert catalog["sd15"].coefficient == 1.0
    assert catalog["sdxl"].coefficient > catalog["sd15"].coefficient


def test_unknown_model_names_the_choices() -> None:
    with pytest.raises(UnknownModelError, match=r"unknown model 'sd3'.*sd15"):
        load_catalog()["sd3"]


@pytest.mark.parametrize(
    ("model", "field", "value", "message"),
    [
        ("sd15", "vram", "vram7", r"entry 'sd15', field 'vram'"),
        ("sd15", "coefficient", -1, r"entry 'sd15', field 'coefficient'"),
        ("sdxl", "files", {"x.safetensors": "nothex"}, r"entry 'sdxl', field 'files'.*64 lowercase hex"),
        ("smollm2-135m", "text", None, r"entry 'smollm2-135m'.*\[text\] limits"),
        ("tiny-sd", "family", "dalle", r"entry 'tiny-sd', field 'family'"),
        ("sd15", "colour", "blue", r"entry 'sd15', field 'colour'.*not permitted"),
    ],
)
def test_bad_entry_fails_naming_entry_and_field(model: str, field: str, value: object, message: str) -> None:
    data = shipped()
    if value is None:
        del data["models"][model][field]
    else:
        data["models"][model][field] = value
    with pytest.raises(CatalogError, match=message):
        parse_catalog(data, "test.toml")


def test_image_limits_must_be_multiples_of_8() -> None:
    data = shipped()
    data["models"]["sd15"]["image"]["max_width"] = 1020
    with pytest.raises(CatalogError, match=r"entry 'sd15', field 'image.max_width'.*multiple of 8"):
        parse_catalog(data, "test.toml")


def test_packaged_source_must_pin_hashes() -> None:
    data = shipped()
    data["models"]["smollm2-135m"]["files"] = {}
    with pytest.raises(CatalogError, match=r"smollm2-135m.*pin the sha256"):
        parse_catalog(data, "test.toml")


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="cannot read catalog"):
        load_catalog(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[models.x\n")
    with pytest.raises(CatalogError, match="not valid TOML"):
        load_catalog(bad)


def test_queue_names_follow_the_tier() -> None:
    catalog = load_catalog()
    assert catalog["sd15"].queue == "vram8.sd15"
    assert catalog["sdxl"].queue == "vram12.sdxl"
    assert catalog["mixtral-8x7b"].queue == "vram24.mixtral-8x7b"
    assert catalog["sd15"].private_queue == "private.vram8.sd15"
