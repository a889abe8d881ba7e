"""``bench.bench_batch_route`` at a tiny size, so it cannot rot: both routes run end to end
through the local runtime, the books balance (the bench raises otherwise), the batch route
costs half, and each figure the report prints is there. Also: its books check does refuse
books that do not balance."""

from __future__ import annotations

import dataclasses
from decimal import Decimal
from pathlib import Path

import pytest

from bench._common import Section
from bench.bench_batch_route import BooksError, Settings, check_books, compare, ratio, report

JOBS = 30


def test_the_bench_at_30_jobs_books_exact_and_the_batch_route_at_half_price(
    tmp_path: Path,
) -> None:
    settings = Settings(jobs=JOBS, turnaround_s=2.0, gather_every_s=1.0)
    runs = compare(tmp_path, settings)

    sync, batch = runs["sync"], runs["batch"]
    # the same tokens at half the prices (gpt-4.1's prices are whole nanodollars per
    # token at both routes, so no rounding: exactly half)
    assert ratio(runs) == Decimal("0.5"), ratio(runs)
    assert sync.run.stats is not None and batch.run.stats is not None
    assert not sync.run.stats.batch_billed_by_model  # nothing went through a batch API
    assert batch.run.stats.batch_billed_by_model["gpt-4.1"].calls == JOBS
    assert not batch.run.stats.billed_by_model  # nor synchronously
    # the batch route's wall time is at least its turnaround, and its ideal counts it
    assert settings.turnaround_s <= batch.run.wall_s
    assert batch.ideal_s >= settings.turnaround_s + settings.gather_every_s
    gathering = [p for p in batch.passes if p.gathered]
    assert [p.gathered for p in gathering] == [JOBS]
    assert gathering[0].aws_calls["dynamodb TransactWriteItems"] >= 1  # its requests timed
    assert sum(p.ingested for p in batch.passes) == JOBS
    for r in runs.values():
        assert r.aws_requests > 0 and r.ddb_writes > 0 and sum(r.wru.values()) > 0

    section = Section("batch_route", "test")
    report(section, runs, settings)
    text = section.render()
    assert "Cost ratio batch ÷ sync: 0.5000" in text
    assert "| batch | 30 |" in text and "| sync | 30 |" in text
    assert "gatherer's time in (requests)" in text

    # the check refuses books that do not balance: a cost record less than the ledger
    facts = dataclasses.replace(batch.run.facts, cost_sum=batch.run.facts.cost_sum - 1)
    broken = dataclasses.replace(batch, run=dataclasses.replace(batch.run, facts=facts))
    with pytest.raises(BooksError, match="ledger spent"):
        check_books(broken)
