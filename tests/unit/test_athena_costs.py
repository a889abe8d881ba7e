"""``costs --athena``'s SQL, run for real over the same records in SQLite (``athena_sqlite``),
gives the very report the S3 reader adds up, for every grouping and filter; and the query
is refused clearly when the workgroup is not there."""

from __future__ import annotations

import datetime as dt
import itertools
from decimal import Decimal
from typing import Any

import pytest
from botocore.exceptions import ClientError

from chatbatch.client.athena_costs import AthenaError, AthenaQuery, report_from_rows, report_sql
from chatbatch.client.cost_groups import Grouping, group_name, group_order
from chatbatch.client.costs import CostReport
from chatbatch.core.config import Config, Model
from chatbatch.core.output_lines import CostRecord
from chatbatch.core.pricing import from_nanos
from tests.unit import athena_sqlite

DATABASE, TABLE = "chatbatch_costs", "cost_records"
DAYS = ["2026-01-30", "2026-01-31", "2026-02-01"]
MODELS = [("deepseek-chat", "deepseek"), ("gpt-4.1", "openai")]
TENANTS: list[dict[str, str]] = [
    {"tenant": "acme", "feature": "search"},
    {"tenant": "globex"},
    {},
    {"o'k": "quoted key", "tenant": "it's"},
]


def records() -> list[dict[str, Any]]:
    """Cost records as their JSON: jobs, cache hits, worst-case bookings, an unread call's
    own record, no role, both routes (gpt-4.1's batch records at the batch route), and
    older records without metadata, cache-write fields or route."""
    out = []
    for i in range(48):
        model, provider = MODELS[i % 2]
        nanos = 1_000 + 7_919 * i
        record = CostRecord(
            ts=f"{DAYS[i % 3]}T10:00:00.000+00:00",
            dt=DAYS[i % 3],
            batch_id=f"b-{i % 4}",
            custom_id=f"j{i}",
            priority=["critical", "high", "normal", "low"][i % 4],
            model=model,
            model_id=model,
            provider=provider,
            role="summarise" if i % 5 else None,
            prompt_tokens=100 + i,
            cached_tokens=i % 7,
            cache_write_tokens=i % 3,
            cache_write_1h_tokens=i % 2,
            completion_tokens=50 + 2 * i,
            reasoning_tokens=0,
            cost_nanos=0 if i % 11 == 0 else nanos,
            cost_usd=from_nanos(0 if i % 11 == 0 else nanos),
            cached=i % 11 == 0,
            usage_estimated=i % 13 == 0,
            attempt="r-1" if i % 17 == 0 else None,
            metadata=TENANTS[i % 4],
            route="batch" if i % 4 in (1, 3) and i % 8 != 7 else "sync",
        )
        data = record.model_dump(mode="json")
        if i % 6 == 5:  # written before these fields existed
            for key in ("metadata", "cache_write_tokens", "cache_write_1h_tokens", "route"):
                del data[key]
        out.append(data)
    return out


def s3_report(
    rows: list[dict[str, Any]],
    grouping: Grouping,
    since: dt.date | None,
    batch: str | None,
    prices: dict[str, Model] | None = None,
) -> CostReport:
    """What the S3 reader adds up: every record of the days from ``since``, of ``batch``."""
    report = CostReport(since=since, by=grouping, prices=prices or {})
    for data in rows:
        record = CostRecord.model_validate(data)
        if (since is None or record.dt >= since.isoformat()) and batch in (None, record.batch_id):
            report.add(record)
    return report


GROUPINGS = [
    ("model",),
    ("priority",),
    ("role",),
    ("day",),
    ("batch",),
    ("route",),
    ("route", "model"),
    ("metadata.tenant",),
    ("metadata.o'k",),
    ("model", "metadata.tenant"),
    ("day", "metadata.feature", "role"),
]
FILTERS = [(None, None), (dt.date(2026, 1, 31), None), (None, "b-1"), (dt.date(2026, 2, 1), "b-2")]


@pytest.mark.parametrize(
    ("keys", "since", "batch"),
    [(k, s, b) for k, (s, b) in itertools.product(GROUPINGS, FILTERS)],
)
def test_athena_sql_adds_up_what_the_s3_reader_does(
    keys: tuple[str, ...], since: dt.date | None, batch: str | None, config: Config
) -> None:
    grouping = Grouping.parse(keys)
    data = records()
    sql = report_sql(DATABASE, TABLE, grouping, since=since, batch=batch)
    rows = athena_sqlite.run(sql, DATABASE, TABLE, data)
    athena = report_from_rows(rows, grouping, since, config.models)
    expected = s3_report(data, grouping, since, batch, config.models)
    assert expected.total.jobs > 0
    assert athena.groups == expected.groups
    assert athena.total == expected.total and athena.billed == expected.billed
    assert athena.daily == expected.daily and athena.days == expected.days
    # the batch route's records and their saving, the same to the nanodollar (batch b-2
    # is deepseek-chat's only: no batch API, no batch record)
    used = batch != "b-2"
    assert (expected.total.batch_jobs > 0) == (expected.total.saved_usd > 0) == used
    assert athena.unpriced == expected.unpriced == set()


def test_sql_filters_on_the_partition_and_groups_every_key() -> None:
    grouping = Grouping.parse(["model", "metadata.tenant"])
    sql = report_sql(DATABASE, TABLE, grouping, since=dt.date(2026, 1, 31), batch="b-1")
    assert "WHERE dt >= '2026-01-31' AND batch_id = 'b-1'" in sql  # partition pruning
    assert "element_at(metadata, 'tenant')" in sql
    assert sql.splitlines()[-1] == "GROUP BY 1, 2, 3, 4, 5, 6"  # 2 groups, dt, model, cached, route
    assert f'FROM "{DATABASE}"."{TABLE}"' in sql
    assert "'o''k'" in report_sql(DATABASE, TABLE, Grouping.parse(["metadata.o'k"]))


def test_nothing_recorded_adds_up_to_nothing() -> None:
    grouping = Grouping()
    rows = athena_sqlite.run(report_sql(DATABASE, TABLE, grouping), DATABASE, TABLE, [])
    report = report_from_rows(rows, grouping)
    assert report.groups == {} and report.total.cost_usd == Decimal(0) and report.days == 0


class _NoWorkgroup:
    """An Athena client whose account has no such workgroup (as AWS answers)."""

    def start_query_execution(self, **kwargs: Any) -> dict[str, Any]:
        raise ClientError(
            {"Error": {"Code": "InvalidRequestException", "Message": "WorkGroup x is not found"}},
            "StartQueryExecution",
        )


def test_a_missing_workgroup_says_to_deploy() -> None:
    query = AthenaQuery(_NoWorkgroup(), "chatbatch-costs")
    with pytest.raises(AthenaError, match="deploy this version of the stack"):
        query.rows("SELECT 1", DATABASE)


def test_groups_are_keyed_by_their_values_not_their_joined_names() -> None:
    """Values containing `` / `` and a value literally ``(none)``: four distinct groups, in
    the S3 reader and in the Athena SQL alike; a missing value is None, not ``(none)``."""
    metadata = [
        {"org": "acme / eu", "team": "search"},
        {"org": "acme", "team": "eu / search"},
        {"org": "(none)", "team": "x"},
        {"team": "x"},
        {"org": "", "team": "x"},  # an empty value counts as missing, as in SQL
    ]
    data = []
    for i, meta in enumerate(metadata):
        record = CostRecord.model_validate(records()[1] | {"custom_id": f"c{i}", "metadata": meta})
        data.append(record.model_dump(mode="json"))
    grouping = Grouping.parse(["metadata.org", "metadata.team"])
    expected = s3_report(data, grouping, None, None)
    sql = report_sql(DATABASE, TABLE, grouping)
    athena = report_from_rows(athena_sqlite.run(sql, DATABASE, TABLE, data), grouping)
    assert athena.groups == expected.groups
    assert {key: totals.jobs for key, totals in expected.groups.items()} == {
        ("acme / eu", "search"): 1,
        ("acme", "eu / search"): 1,
        ("(none)", "x"): 1,
        (None, "x"): 2,
    }
    assert [group_name(key) for key in sorted(expected.groups, key=group_order)] == [
        "(none) / x",
        "(none) / x",
        "acme / eu / search",
        "acme / eu / search",
    ]
