"""The other half of ``test_batch_route_crashes``' matrix: the gatherer killed between two
writes of an ingest (its own module, so the halves run side by side under ``make
test``'s loadfile distribution)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.test_batch_route_crashes import (
    Crashes,
    assert_books,
    crashes,
    run_file,
    scenario_ids,
)

pytestmark = pytest.mark.slow
__all__ = ["crashes"]  # the fixture the matrix's cases take


@pytest.mark.parametrize("crashes", list(scenario_ids(ingest=True)), indirect=True)
def test_a_gatherer_killed_while_ingesting_loses_nothing_and_counts_nothing_twice(
    tmp_path: Path, crashes: Crashes
) -> None:
    books = run_file(tmp_path, expires=True)
    assert crashes.died[crashes.points[-1]] >= 1, f"the crash point was never reached: {crashes}"
    assert_books(books, expired=True)
