"""Shared fixtures, one module per concern under tests/fixtures/ (real services: no mocks on the job path).

Also the order ``make test-slow`` hands test files to pytest-xdist's workers in (``--dist loadfile
--no-loadscope-reorder``): the longest files first, then the rest in collection order. A worker takes the next
file when it is nearly done with its own, so a long file handed out late kept the other worker idle to the end:
the slow suite took 20:49 for 2,129 s of tests on 2 workers (1,064 s each at best), its 371 s outage file handed
out in the middle, after xdist's own reorder (most tests first) put tests/test_ledger_batched.py's 162 quick
tests ahead of it. ``make test`` keeps xdist's reorder: its tail cost only 24 s, and in one run with its longest
files first it took 16:08 instead of 14:22, its CPU-heavy files side by side (tests/test_bench.py 54 s to 90 s,
tests/test_embedded.py 37 s to 67 s).
"""

from __future__ import annotations

import pytest

pytest_plugins = [
    "tests.fixtures.db",
    "tests.fixtures.ledger",
    "tests.fixtures.s3",
    "tests.fixtures.broker",
    "tests.fixtures.models",
    "tests.fixtures.network",
    "tests.fixtures.dbfaults",
    "tests.fixtures.evm_node",
]

# Files of the slow suite over 40 s (setup included) in `pytest -m slow --durations=0` on 2026-12-02, longest
# first. Only their order matters; a file missing here only starts later.
LONGEST_FIRST = [
    "tests/test_db_faults_slow.py",  # 371 s (a 330 s outage at the production back-off)
    "tests/test_broker_outage.py",  # 242 s
    "tests/test_image_audit.py",  # 198 s
    "tests/test_cheaters.py",  # 166 s
    "tests/test_text_audit.py",  # 146 s
    "tests/adversary/test_overwrite_after_credit.py",  # 114 s
    "tests/test_bench_models.py",  # 76 s
    "tests/test_chaos.py",  # 74 s
    "tests/test_embedded.py",  # 73 s
    "tests/adversary/test_purge.py",  # 63 s
    "tests/test_supervision.py",  # 63 s
    "tests/adversary/test_inline_outputs.py",  # 60 s
    "tests/test_ledger_batched.py",  # 58 s
    "tests/test_bench_overhead.py",  # 55 s
    "tests/adversary/test_stream_injection.py",  # 54 s
    "tests/adversary/test_forged_jobs.py",  # 46 s
    "tests/test_economy_demo.py",  # 44 s
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest files first (a stable sort: the tests of a file keep their order)."""
    rank = {path: i for i, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))
