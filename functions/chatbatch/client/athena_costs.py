"""``chatbatch costs --athena``: the cost report computed by Athena over the stack's Glue
table of the cost records (``infra/costs_table.py``), for volumes where reading one S3
object per job is too slow.

``report_sql`` adds the records up in SQL at the grain the report needs (the ``--by``
groups, and each day, model, cache flag and route: what ``--compare``, ``--chart`` and
the batch route's saving read; an older record without ``route`` is ``sync``), and
``report_from_rows`` folds those rows into the same ``CostReport`` the S3 reader builds, so
both print the same table. Money is summed as integer nanodollars (``cost_nanos``), exact.
The query runs in the stack's workgroup (``StartQueryExecution``, polled with
``GetQueryExecution``, read with ``GetQueryResults``), filtered on the partition ``dt``
so Athena reads only the days asked for.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from botocore.exceptions import ClientError

from chatbatch.client.cost_groups import Grouping, column_sql, sql_string
from chatbatch.client.costs import CostReport, Totals
from chatbatch.core.config import Model
from chatbatch.core.pricing import from_nanos
from chatbatch.core.resources import COSTS_TABLE, costs_database, costs_workgroup

# the summed columns, each a SQL aggregate over the table (NULL in an older record: 0)
SUMS = {
    "jobs": "sum(CASE WHEN attempt IS NULL THEN 1 ELSE 0 END)",
    "prompt_tokens": "sum(prompt_tokens)",
    "cached_tokens": "sum(cached_tokens)",
    "cache_write_tokens": "sum(cache_write_tokens)",
    "cache_write_1h_tokens": "sum(cache_write_1h_tokens)",
    "completion_tokens": "sum(completion_tokens)",
    "cost_nanos": "sum(cost_nanos)",
    "estimated_calls": "sum(CASE WHEN usage_estimated THEN 1 ELSE 0 END)",
    "estimated_nanos": "sum(CASE WHEN usage_estimated THEN cost_nanos ELSE 0 END)",
}
# beside the groups: what the daily chart, compare and the batch route's saving read
KEYS = ("dt", "model", "cached", f"{column_sql('route')} AS route")
DONE = {"SUCCEEDED", "FAILED", "CANCELLED"}


class AthenaError(RuntimeError):
    """A query that could not run or did not succeed; the message says why and what to do."""


def report_sql(
    database: str,
    table: str,
    grouping: Grouping,
    *,
    since: dt.date | None = None,
    batch: str | None = None,
) -> str:
    """The query whose rows ``report_from_rows`` reads: one row per group, day, model and
    cache flag. Valid Trino (Athena) and SQLite (the tests' evaluator)."""
    groups = [f"{expr} AS g{i}" for i, expr in enumerate(grouping.sql())]
    sums = [f"coalesce({expr}, 0) AS {name}" for name, expr in SUMS.items()]
    where = []
    if since is not None:
        where.append(f"dt >= {sql_string(since.isoformat())}")
    if batch is not None:
        where.append(f"batch_id = {sql_string(batch)}")
    keys = len(groups) + len(KEYS)
    return "\n".join(
        [
            "SELECT " + ", ".join([*groups, *KEYS, *sums]),
            f'FROM "{database}"."{table}"',
            *(["WHERE " + " AND ".join(where)] if where else []),
            "GROUP BY " + ", ".join(str(i) for i in range(1, keys + 1)),
        ]
    )


def _flag(value: str | int | None) -> bool:
    return str(value).lower() in ("true", "1")


def report_from_rows(
    rows: Iterable[dict[str, Any]],
    grouping: Grouping,
    since: dt.date | None = None,
    prices: dict[str, Model] | None = None,
) -> CostReport:
    """The report of ``report_sql``'s rows (column name -> value, as text or numbers);
    ``prices``: the price table the batch route's saving is reckoned at."""
    report = CostReport(since=since, by=grouping, prices=prices or {})
    for row in rows:
        nanos = int(row["cost_nanos"])
        totals = Totals(
            **{
                name: int(row[name])
                for name in SUMS
                if name not in ("cost_nanos", "estimated_nanos")
            },
            cost_usd=from_nanos(nanos),
            estimated_usd=from_nanos(int(row["estimated_nanos"])),
        )
        values = (row[f"g{i}"] for i in range(len(grouping.keys)))
        group = tuple(None if value is None else str(value) for value in values)
        day, model, cached = str(row["dt"]), str(row["model"]), _flag(row["cached"])
        report.add_totals(group, day, model, cached, totals, str(row["route"]))
    return report


class AthenaQuery:
    """One query in a workgroup, waited for and read (``athena``: a boto3 Athena client)."""

    def __init__(
        self,
        athena: Any,
        workgroup: str,
        *,
        poll_s: float = 0.5,
        timeout_s: float = 900,
        on_state: Callable[[str], None] = lambda state: None,
    ) -> None:
        self.athena = athena
        self.workgroup = workgroup
        self.poll_s = poll_s
        self.timeout_s = timeout_s
        self.on_state = on_state
        self.query_id: str | None = None
        self.scanned_bytes = 0

    def rows(self, sql: str, database: str) -> list[dict[str, str | None]]:
        """Run ``sql`` and return its rows, column name -> text (None: SQL NULL)."""
        self.query_id = self._start(sql, database)
        try:
            self._wait(self.query_id)
        except BaseException:  # Ctrl-C or a timeout: stop paying for the scan
            self.athena.stop_query_execution(QueryExecutionId=self.query_id)
            raise
        return list(self._read(self.query_id))

    def _start(self, sql: str, database: str) -> str:
        try:
            started = self.athena.start_query_execution(
                QueryString=sql,
                WorkGroup=self.workgroup,
                QueryExecutionContext={"Database": database},
            )
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") != "InvalidRequestException":
                raise
            raise AthenaError(
                f"Athena refused the query in workgroup {self.workgroup!r}: "
                f"{err.response['Error'].get('Message', '')} (deploy this version of the stack: "
                "it creates the workgroup and the cost-record table; or run costs without "
                "--athena)"
            ) from None
        query_id: str = started["QueryExecutionId"]
        return query_id

    def _wait(self, query_id: str) -> None:
        deadline = time.monotonic() + self.timeout_s
        while True:
            execution = self.athena.get_query_execution(QueryExecutionId=query_id)
            execution = execution["QueryExecution"]
            status = execution["Status"]
            self.on_state(status["State"])
            scanned = execution.get("Statistics", {}).get("DataScannedInBytes")
            self.scanned_bytes = int(scanned or 0)
            if status["State"] == "SUCCEEDED":
                return
            if status["State"] in DONE:
                reason = status.get("StateChangeReason", "no reason given")
                raise AthenaError(f"Athena query {query_id} {status['State']}: {reason}")
            if time.monotonic() > deadline:
                raise AthenaError(
                    f"Athena query {query_id} still {status['State']} after {self.timeout_s:.0f} "
                    "s: stopped; narrow it with --since or --batch"
                )
            time.sleep(self.poll_s)

    def _read(self, query_id: str) -> Iterator[dict[str, str | None]]:
        header: list[str] | None = None
        pages = self.athena.get_paginator("get_query_results").paginate(QueryExecutionId=query_id)
        for page in pages:
            for row in page["ResultSet"]["Rows"]:
                values = [cell.get("VarCharValue") for cell in row["Data"]]
                if header is None:  # the first row names the columns
                    header = [str(v) for v in values]
                    continue
                yield dict(zip(header, values, strict=True))


def athena_report(
    athena: Any,
    stack: str,
    grouping: Grouping,
    *,
    since: dt.date | None = None,
    batch: str | None = None,
    on_state: Callable[[str], None] = lambda state: None,
    prices: dict[str, Model] | None = None,
) -> tuple[CostReport, AthenaQuery]:
    """The report of the stack's cost records, computed by Athena in the stack's workgroup."""
    database = costs_database(stack)
    query = AthenaQuery(athena, costs_workgroup(stack), on_state=on_state)
    sql = report_sql(database, COSTS_TABLE, grouping, since=since, batch=batch)
    return report_from_rows(query.rows(sql, database), grouping, since, prices), query
