"""Every cent the provider bills is booked, and no budget is passed, under every fault mix
(issue 13): ``bench.bench_money``'s harness, small. Each mix runs ~40 realistic jobs
(open-ended, ``n`` > 1, tools, streams, three models) in two batches, one under its own
budget and one under the day's limit, both reached. What the provider billed is the
simulator's own count priced by the harness (never the pipeline's pricing code).
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from bench.bench_money import MIXES, Books, Mix, run_mix, usd

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("quick_deferrals")]

JOBS = 40


@pytest.mark.parametrize("mix", MIXES, ids=[m.name.split(":")[0] for m in MIXES])
def test_every_billed_cent_is_booked_and_no_budget_is_passed(tmp_path: Path, mix: Mix) -> None:
    books = run_mix(tmp_path, mix, JOBS, timeout_s=120)
    stats = books.stats
    assert set(stats.faults) >= {k.value for k in mix.faults}, "every kind of the mix was seen"
    assert books.booked >= books.billed, explain(books)
    assert books.booked_calls >= stats.billed_calls, "a billed call without a cost record"
    if mix.exact:  # every billed answer read with its usage: booked exactly
        assert books.booked == books.billed, explain(books)
        assert books.estimated_calls == 0
    assert books.day_overshoot == 0, explain(books)
    assert books.billed_overshoot == 0, explain(books)
    assert books.batch_overshoot == 0, explain(books)
    assert books.consistent, explain(books)
    assert books.unfinished == 0, "every job succeeded or was deferred by a budget"
    assert all(books.deferred), f"both limits reached: {books.deferred}"
    if mix.damaging:  # answers billed and not read with usage: booked at the worst case
        assert books.estimated_calls > 0


def explain(b: Books) -> str:
    records = sum((r.records_usd for r in b.batches), Decimal(0))
    summaries = sum((r.summary_usd for r in b.batches), Decimal(0))
    return (
        f"billed {usd(b.billed)}, booked {usd(b.booked)} (records {usd(records)}, summaries "
        f"{usd(summaries)}); day "
        f"{b.day} limit {b.daily_limit}; batch {b.batch} limit {b.capped.limit_usd}; "
        f"estimated {b.estimated_calls}; sim {b.stats.billed_calls} billed, "
        f"{b.stats.billed_unread} unread, faults {b.stats.faults}"
    )
