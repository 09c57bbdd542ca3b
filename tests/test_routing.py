"""Queues by tier; a miner consumes only what it serves and fits; its pool never forks."""

from __future__ import annotations

import pytest

from heurist.catalog import load_catalog
from heurist.celery_app import worker_pool
from heurist.routing import route_table, servable

CATALOG = load_catalog()


def test_route_table_is_sorted_by_tier() -> None:
    rows = route_table(CATALOG)
    assert [r.vram_gb for r in rows] == sorted(r.vram_gb for r in rows)
    assert {r.queue for r in rows} >= {"vram8.sd15", "vram12.sdxl", "vram24.mixtral-8x7b"}


def test_a_miner_serves_only_what_fits() -> None:
    fits, refused = servable(CATALOG, ["sd15", "sdxl", "mixtral-8x7b"], 12)
    assert [m.id for m in fits] == ["sd15", "sdxl"]
    assert refused == ["mixtral-8x7b needs vram24 (24 GB); this device has 12 GB"]


@pytest.mark.parametrize(
    ("url", "pool"),
    [("amqp://guest@localhost//", ("threads", 4)), ("pyamqp://h//", ("threads", 4)),
     ("amqps://h//", ("threads", 4)), ("embedded+sqlite:///x.sqlite", ("solo", 1)), ("sqla+sqlite:///x", ("solo", 1))],
)
def test_worker_pools_never_fork(url: str, pool: tuple[str, int]) -> None:
    assert worker_pool(url, 4) == pool
