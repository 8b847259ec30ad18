"""The `backend_free` marker (pyproject.toml registers it): a test whose
result cannot depend on the Keras backend runs in one pass of run_tests.py
only, its environment's first (one per Keras, where DIFFLR_EXTRA_PYTHONS
adds others), which run_tests.py names in DIFFLR_BACKEND_FREE_PASS for
every pass. Elsewhere it is skipped, for a reason naming that pass
(run_tests.EXPECTED_SKIPS accepts it only where that pass was part of the
run). Without the variable (plain `pytest`) they always run.

Light on purpose (no Keras): tests/test_run_tests.py's small runs use it too.
"""

import os

import pytest


def pytest_collection_modifyitems(config, items):
    # A hook of every item collected, tests/ and benchmarks/ alike.
    where = os.environ.get("DIFFLR_BACKEND_FREE_PASS")
    elsewhere = where and where != os.environ.get("KERAS_BACKEND")
    for item in items:
        if not item.get_closest_marker("backend_free"):
            continue
        # Skipped by a mark in the one pass it runs in, it would run nowhere.
        if any(item.iter_markers("skip")) or any(item.iter_markers("skipif")):
            raise pytest.UsageError(
                f"{item.nodeid} is marked backend_free and skip/skipif: it could "
                "be skipped in its one pass and run in none; drop one of the marks")
        if elsewhere:
            item.add_marker(pytest.mark.skip(
                reason=f"backend-free: runs in the {where} pass"))
