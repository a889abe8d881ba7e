"""``costs`` by route and what the batch route saved, on records built here: the batch
records' tokens at the synchronous prices minus what they paid, worked out by hand on the
shipped prices (gpt-4.1: 2.00 / 0.50 / 8.00 synchronous, 1.00 / 0.25 / 4.00 batch per 1M
input / cached input / output tokens); a record written before ``route`` existed is
``sync``; ``--compare`` prices the usage at the batch prices too; and, over random
records, the Athena SQL and the S3 reader agree on every figure, the saving included."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from chatbatch.cli.costs import _costs_output, _costs_tables
from chatbatch.cli.output import out
from chatbatch.client.athena_costs import report_from_rows, report_sql
from chatbatch.client.cost_groups import Grouping
from chatbatch.client.costs import CostReport
from chatbatch.core.config import load_config
from chatbatch.core.output_lines import CostRecord
from chatbatch.core.pricing import Usage, cost, from_nanos, to_nanos
from tests.unit import athena_sqlite

DATABASE, TABLE = "chatbatch_costs", "cost_records"
# the shipped config, read once here: hypothesis reruns a test without its fixtures
SHIPPED = load_config(Path(__file__).resolve().parents[2] / "chatbatch.toml")
RETIRED = "gpt-4-retired"  # a model no longer in the price table


def record(
    custom_id: str,
    usd: str,
    *,
    model: str = "gpt-4.1",
    route: str | None = "sync",
    prompt: int = 0,
    cached_tokens: int = 0,
    completion: int = 0,
    cached: bool = False,
    day: str = "2026-03-01",
) -> dict[str, Any]:
    """A cost record's JSON; ``route`` None: written before the field existed."""
    paid = Decimal(usd)
    data = CostRecord(
        ts=f"{day}T10:00:00.000+00:00",
        dt=day,
        batch_id="b-1",
        custom_id=custom_id,
        priority="low",
        model=model,
        model_id=model,
        provider="openai",
        prompt_tokens=prompt,
        cached_tokens=cached_tokens,
        completion_tokens=completion,
        reasoning_tokens=0,
        cost_nanos=to_nanos(paid),
        cost_usd=paid,
        cached=cached,
    ).model_dump(mode="json")
    if route is None:
        del data["route"]
    else:
        data["route"] = route
    return data


def report_of(rows: list[dict[str, Any]], keys: tuple[str, ...] = ("route",)) -> CostReport:
    report = CostReport(by=Grouping.parse(keys), prices=SHIPPED.models)
    for data in rows:
        report.add(CostRecord.model_validate(data))
    return report


# batch: 0.8M uncached x 1.00 + 0.2M cached x 0.25 + 0.5M output x 4.00 = 2.85 paid;
# synchronously 0.8 x 2.00 + 0.2 x 0.50 + 0.5 x 8.00 = 5.70: saved 2.85
BATCH = record(
    "a", "2.85", route="batch", prompt=1_000_000, cached_tokens=200_000, completion=500_000
)
SYNC = record("b", "0.6", prompt=100_000, completion=50_000)  # 0.1 x 2 + 0.05 x 8
OLD = record("c", "0.1", route=None, prompt=10_000, completion=10_000)  # 0.02 + 0.08
HIT = record("d", "0", route="batch", prompt=7_000, completion=7_000, cached=True)
GONE = record("e", "1.00", model=RETIRED, route="batch", prompt=500_000, completion=100_000)


def test_by_route_splits_the_spend_and_the_batch_route_saved_its_synchronous_price() -> None:
    report = report_of([BATCH, SYNC, OLD, HIT, GONE])
    sync, batch = report.groups[("sync",)], report.groups[("batch",)]
    assert set(report.groups) == {("sync",), ("batch",)}  # the old record is sync, no (none)
    assert (sync.jobs, sync.cost_usd, sync.batch_jobs, sync.saved_usd) == (
        2,
        Decimal("0.7"),
        0,
        Decimal(0),
    )
    assert (batch.jobs, batch.cost_usd, batch.batch_usd) == (3, Decimal("3.85"), Decimal("3.85"))
    # the cache hit paid nothing and would have paid nothing; the retired model has no
    # synchronous price left to compare with: named, not guessed
    assert batch.saved_usd == report.total.saved_usd == Decimal("2.85")
    assert report.unpriced == {RETIRED}
    assert report.total.batch_jobs == 3 and report.total.cost_usd == Decimal("4.55")


def test_a_record_without_route_is_sync_in_sql_too() -> None:
    grouping = Grouping.parse(["route"])
    rows = athena_sqlite.run(report_sql(DATABASE, TABLE, grouping), DATABASE, TABLE, [OLD])
    assert [row["g0"] for row in rows] == ["sync"]
    assert [row["route"] for row in rows] == ["sync"]
    athena = report_from_rows(rows, grouping, prices=SHIPPED.models)
    assert athena.groups == report_of([OLD]).groups


def test_the_output_adds_the_saving_and_keeps_every_field_it_had() -> None:
    report = report_of([BATCH, SYNC, OLD, HIT, GONE])
    result = _costs_output(report, None, None, None)
    data = result.model_dump(mode="json")
    assert Decimal(data["saved_usd"]) == Decimal("2.85")
    assert Decimal(data["batch_usd"]) == Decimal("3.85") and data["batch_jobs"] == 3
    assert data["saved_unpriced_models"] == [RETIRED]
    assert {g["name"]: Decimal(g["saved_usd"]) for g in data["groups"]} == {
        "batch": Decimal("2.85"),
        "sync": Decimal(0),
    }
    for field in ("total_usd", "jobs", "estimated_usd", "groups", "by", "days"):
        assert field in data
    with out.capture() as captured:
        _costs_tables(result)
    text = captured.get()
    assert "saved" in text and "$2.8500" in text
    assert "batch route: 3 job(s), $3.8500 paid, $2.8500 saved" in text
    assert RETIRED in text


def test_without_batch_records_the_table_is_as_before() -> None:
    result = _costs_output(report_of([SYNC, OLD], ("model",)), None, None, None)
    with out.capture() as captured:
        _costs_tables(result)
    text = captured.get()
    assert "saved" not in text and "batch route" not in text
    assert result.saved_usd == 0 and result.batch_jobs == 0


def test_compare_prices_the_usage_at_the_batch_prices_of_models_that_have_them() -> None:
    report = report_of([BATCH])
    rows = {row.model: row for row in report.compare(SHIPPED)}
    gpt = rows["gpt-4.1"]
    assert (gpt.cost_usd, gpt.batch_cost_usd) == (Decimal("5.7"), Decimal("2.85"))
    assert gpt.ratio == 2 and gpt.batch_ratio == 1  # what was paid: the batch price
    assert gpt.batch_annual_usd == Decimal("2.85") * 365
    assert [name for name, row in rows.items() if row.batch_cost_usd is not None] == [
        name for name, model in SHIPPED.models.items() if model.batch_api is not None
    ]
    deepseek = rows["deepseek-chat"]
    assert deepseek.batch_cost_usd is None and deepseek.batch_annual_usd is None
    with out.capture() as captured:
        _costs_tables(_costs_output(report, None, report.compare(SHIPPED), None))
    text = captured.get()
    sync_table, batch_table = text.split("the same token usage at the batch prices")
    # the synchronous table as it always was; the batch prices in a table of their own
    assert "$5.7000" in sync_table and "$2,080.5000" in sync_table and "deepseek" in sync_table
    assert "gpt-4.1" in batch_table and "$2.8500" in batch_table and "$1,040.2500" in batch_table
    assert "deepseek" not in batch_table


MODELS = [*SHIPPED.models, RETIRED]
DAYS = ["2026-03-01", "2026-03-02"]


@st.composite
def records(draw: st.DrawFn) -> dict[str, Any]:
    """A record of any model (one not in the price table too), route, day and usage, paid
    at its route's prices (a retired model: anything)."""
    model = draw(st.sampled_from(MODELS))
    known = SHIPPED.models.get(model)
    route = draw(st.sampled_from(["sync", "batch", None]))
    if known is not None and known.batch_api is None and route == "batch":
        route = "sync"
    prompt = draw(st.integers(0, 2_000_000))
    usage = Usage(
        prompt_tokens=prompt,
        cached_tokens=draw(st.integers(0, prompt)),
        completion_tokens=draw(st.integers(0, 500_000)),
    )
    cached = draw(st.booleans())
    if known is None:
        paid = from_nanos(draw(st.integers(0, 10**10)))
    else:
        prices = known.batch_priced() if route == "batch" else known
        paid = Decimal(0) if cached else from_nanos(to_nanos(cost(usage, prices)))
    data = record(
        draw(st.text("abc", min_size=1, max_size=6)),
        str(paid),
        model=model,
        route=route,
        prompt=usage.prompt_tokens,
        cached_tokens=usage.cached_tokens,
        completion=usage.completion_tokens,
        cached=cached,
        day=draw(st.sampled_from(DAYS)),
    )
    return data


@settings(max_examples=60, deadline=None)
@given(st.lists(records(), max_size=25), st.sampled_from([("route",), ("route", "model")]))
def test_both_readers_agree_and_the_saving_is_each_batch_records_own(
    rows: list[dict[str, Any]], keys: tuple[str, ...]
) -> None:
    grouping = Grouping.parse(keys)
    s3 = report_of(rows, keys)
    sql = athena_sqlite.run(report_sql(DATABASE, TABLE, grouping), DATABASE, TABLE, rows)
    athena = report_from_rows(sql, grouping, prices=SHIPPED.models)
    assert athena.groups == s3.groups and athena.total == s3.total
    assert athena.unpriced == s3.unpriced

    saved = Decimal(0)
    for data in rows:
        rec = CostRecord.model_validate(data)
        sync = SHIPPED.models.get(rec.model)
        if rec.route == "batch" and not rec.cached and sync is not None:
            usage = Usage(
                prompt_tokens=rec.prompt_tokens,
                cached_tokens=rec.cached_tokens,
                completion_tokens=rec.completion_tokens,
            )
            exact = cost(usage, sync) - cost(usage, sync.batch_priced())
            # paid rounded up to the nanodollar: the saving is at most a nano under exact
            assert exact - Decimal("1e-9") < cost(usage, sync) - rec.cost_usd <= exact
            saved += cost(usage, sync) - rec.cost_usd
    assert s3.total.saved_usd == saved
    assert sum((g.saved_usd for g in s3.groups.values()), Decimal(0)) == saved
    assert all(g.saved_usd == 0 for key, g in s3.groups.items() if key[0] == "sync")
    assert s3.total.batch_jobs == sum(g.jobs for key, g in s3.groups.items() if key[0] == "batch")
    assert s3.total.jobs == sum(g.jobs for g in s3.groups.values())
