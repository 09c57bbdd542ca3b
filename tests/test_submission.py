"""Submissions are checked against the model's limits; defaults come from the catalog."""

from __future__ import annotations

import pytest

from heurist.catalog import load_catalog
from heurist.errors import InvalidJobError
from heurist.submission import image_params, text_params

CATALOG = load_catalog()


def test_defaults_come_from_the_model() -> None:
    params = image_params(CATALOG["sdxl"], "a cat")
    assert (params.width, params.height, params.steps) == (1024, 1024, 30)
    assert text_params(CATALOG["smollm2-135m"], "hi").max_tokens == 64


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"width": 2048}, r"width=2048 is outside 64..1024 for model 'sd15'"),
        ({"height": 500}, r"height=500 must be a multiple of 8 \(e.g. 496\)"),
        ({"steps": 0}, r"steps=0 is outside 1..100"),
        ({"steps": 101}, r"steps=101 is outside 1..100"),
        ({"guidance": 50.0}, r"guidance=50 is outside 0..20"),
    ],
)
def test_out_of_limits_image_is_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(InvalidJobError, match=message):
        image_params(CATALOG["sd15"], "a cat", **kwargs)


def test_empty_prompt_names_the_field() -> None:
    with pytest.raises(InvalidJobError, match=r"^prompt:"):
        image_params(CATALOG["sd15"], "")


def test_wrong_kind_says_which_command() -> None:
    with pytest.raises(InvalidJobError, match=r"makes texts.*heurist submit text"):
        image_params(CATALOG["smollm2-135m"], "a cat")


def test_text_limits() -> None:
    with pytest.raises(InvalidJobError, match=r"max_tokens=513 is outside 1..512"):
        text_params(CATALOG["smollm2-135m"], "hi", max_tokens=513)
    with pytest.raises(InvalidJobError, match=r"takes at most 4000"):
        text_params(CATALOG["smollm2-135m"], "x" * 4001)


def test_nul_characters_are_refused_before_they_reach_a_database() -> None:
    """PostgreSQL refuses NUL in text: a prompt holding one is a clear 'prompt:' error, not a crash later
    (schemathesis found it through the gateway)."""
    catalog = load_catalog()
    with pytest.raises(InvalidJobError, match=r"^prompt: .*NUL"):
        text_params(catalog["smollm2-135m"], "a\x00b")
    with pytest.raises(InvalidJobError, match=r"^negative_prompt: .*NUL"):
        image_params(catalog["tiny-sd"], "a fox", negative_prompt="\x00")
