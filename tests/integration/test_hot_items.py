"""``bench.bench_hot_items`` small: a realistic run of two batches through the local
runtime, every DynamoDB write recorded and given a kind, and the day's ledger's write
units per job equal to what the budget's transactions imply: one charge per invocation
(its jobs reserved together) and one settle per invocation (settled together), each a
transactional write of a small item (2 WRU)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench._common import watched
from bench.bench_hot_items import ITEM_WCU_S, measured_run

pytestmark = pytest.mark.slow

JOBS = 24


def test_every_write_has_a_kind_and_the_ledger_costs_what_its_transactions_say(
    tmp_path: Path,
) -> None:
    with watched() as seen:
        run = measured_run(tmp_path, JOBS, 2, timeout_s=120)
    invocations = sum(1 for batch in seen.batches if batch)  # SQS ones (not the schedule's)
    assert run.unfinished == 0 and run.jobs == JOBS
    assert set(run.batch_jobs) == {"hot-0-0", "hot-0-1"}
    model = run.model
    assert model.unclassified == [], "a write to an item no kind claims"
    assert sum(r.writes for r in model.rows) == len(run.writes)
    ledger = model.row("day's budget ledger")
    assert ledger.items == 1 and ledger.jobs == JOBS
    # an invocation's jobs reserve together and settle together (``worker/finals.py``)
    assert ledger.hottest_wru == 2 * (2 * invocations)
    assert ledger.wcu_per_job == pytest.approx(2 * (2 * invocations) / JOBS)
    assert ledger.ceiling == pytest.approx(ITEM_WCU_S / ledger.wcu_per_job)
    budgeted = model.row("batch budget ledger")  # only the first batch has a budget
    assert budgeted.items == 1 and budgeted.hottest[0] == "budget#batch#hot-0-0"
    assert budgeted.jobs == run.batch_jobs["hot-0-0"]
    counters = model.row("batch counters + completion")
    # a settle per invocation, the registrations, the completion marks
    assert counters.items == 2 and invocations + 2 <= counters.writes < JOBS
    assert model.row("job state").items == JOBS
    assert model.limiting.ceiling == min(r.ceiling for r in model.rows)
    assert ledger.peak_wcu_s > 0
