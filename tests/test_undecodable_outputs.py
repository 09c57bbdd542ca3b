"""Outputs the audit cannot decode fail it (issue 13, finding 3): before, ``check_image`` raised
``UnidentifiedImageError`` out of the audit, which recorded nothing and clawed nothing back.

The whole path (a miner that renders, stores bytes that are not a PNG, is credited, then audited and clawed
back) is the ``not-an-image`` cheat of tests/test_cheaters.py; here, which bytes count as undecodable.
"""

from __future__ import annotations

import io

import pytest
from PIL import Image

from workers.audit.image_check import undecodable


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def test_a_real_png_decodes() -> None:
    assert undecodable(_png()) is None


@pytest.mark.parametrize("name", ["empty", "pdf", "text", "truncated png", "png header only"])
def test_bytes_that_are_no_image_are_named(name: str) -> None:
    png = _png()
    data = {"empty": b"", "pdf": b"%PDF-1.4 " + png[8:64], "text": b'{"text": "hello"}',
            "truncated png": png[: len(png) // 2], "png header only": png[:8]}[name]
    problem = undecodable(data)
    assert problem is not None and problem.startswith("the stored output is not a decodable image ("), problem
