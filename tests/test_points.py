"""The seed's formulas (DESIGN.md "Points")."""

from __future__ import annotations

import pytest

from heurist.catalog import load_catalog
from heurist.jobs import TextParams
from heurist.points import from_micro, job_points, to_micro
from heurist.submission import image_params

CATALOG = load_catalog()


def test_sd15_512_20_steps_is_one_unit() -> None:
    assert job_points(CATALOG["sd15"], image_params(CATALOG["sd15"], "x", width=512, height=512, steps=20)) == 1.0


def test_sd15_1024_40_steps_is_eight_units() -> None:
    params = image_params(CATALOG["sd15"], "x", width=1024, height=1024, steps=40)
    assert job_points(CATALOG["sd15"], params) == 8.0


def test_sdxl_uses_its_coefficient() -> None:
    params = image_params(CATALOG["sdxl"], "x", width=1024, height=1024, steps=20)
    assert job_points(CATALOG["sdxl"], params) == pytest.approx(4 * 3.3)


def test_llm_tokens_per_thousand_times_coefficient() -> None:
    params = TextParams(prompt="x", max_tokens=10)
    assert job_points(CATALOG["mixtral-8x7b"], params, 400, 600) == 1.0
    assert job_points(CATALOG["smollm2-135m"], params, 400, 600) == pytest.approx(0.02)


def test_micro_points_round_trip() -> None:
    assert to_micro(8.0) == 8_000_000
    assert from_micro(to_micro(0.0000015)) == pytest.approx(0.000002)
