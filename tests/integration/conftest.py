"""Integration tests share their scenarios with the benchmarks (``bench/``): the fault
suite runs them small here and large in ``make bench``. Put the repository root on the
import path so ``bench`` imports under any pytest entry point."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from chatbatch.state.budget import errors as budget_errors

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


@pytest.fixture
def quick_deferrals(monkeypatch: pytest.MonkeyPatch) -> None:
    """Jobs deferred while reservations in flight hold the last of a budget look again
    after 3 s, not ``BUSY_RETRY_S``'s 15: the same waves of reservations near a limit,
    more of them, in less time (a run that reaches a budget spent most of its wall in
    those waits: ``test_money`` 180 s of which ~140 s waiting, 40 s after). Not much
    less: each look is a hand-back (SQS, a refused reservation, a state move), and at 1 s
    ``test_budget_pause``'s 97 waiting jobs made 1,019 of them before the pause (36 s),
    at 2 s 531 (19 s), at 4 s 294 (16 s)."""
    monkeypatch.setattr(budget_errors, "BUSY_RETRY_S", 3.0)
