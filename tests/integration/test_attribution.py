"""Attribution through the local runtime: a job's metadata lands in its cost record, and
``chatbatch costs --by metadata.KEY`` (alone or with other keys) adds the records up per
tenant to the cent of the results' own costs; ``costs --athena`` prints the same report
from Athena's answer to the same grouping as SQL.

One ``LocalRuntime`` (moto's server on loopback, the simulator, the emulated Lambda) with
its stack registered the way ``chatbatch local up`` does; every command finds it by its
stack outputs.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from typer.testing import CliRunner, Result

from chatbatch.cli.app import app
from chatbatch.client.athena_costs import report_sql
from chatbatch.client.cost_groups import Grouping
from chatbatch.client.flush_objects import cost_lines
from chatbatch.core.config import Config
from chatbatch.core.output_lines import CostRecord
from chatbatch.core.resources import COSTS_TABLE, costs_database, costs_workgroup
from chatbatch.local.options import LocalOptions
from chatbatch.local.runtime import LocalRuntime
from chatbatch.local.simulator import SimulatorSettings
from tests.unit import athena_sqlite

pytestmark = pytest.mark.slow
runner = CliRunner()
TENANTS = {"acme": "search", "globex": "chat"}  # tenant -> its feature


@dataclass
class Local:
    rt: LocalRuntime
    config_file: Path
    workdir: Path

    def cli(self, *args: str, code: int = 0) -> Result:
        result = runner.invoke(app, [*args, "--config", str(self.config_file)])
        assert result.exit_code == code, (result.stdout, result.stderr, result.exception)
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "--json").stdout)


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory, config: Config) -> Iterator[Local]:
    workdir = tmp_path_factory.mktemp("attr")
    config_file = workdir / "chatbatch.json"
    config_file.write_text(config.model_dump_json())
    options = LocalOptions(
        config_path=config_file, server=True, concurrency=2, simulator=SimulatorSettings()
    )
    with LocalRuntime(options) as rt:
        rt.register_stack()  # what `chatbatch local up` does
        yield Local(rt, config_file, workdir)


def tenant_of(i: int) -> str | None:
    """Jobs 0, 3, 6, ... have no tenant; the rest alternate between the two."""
    return None if i % 3 == 0 else sorted(TENANTS)[i % 2]


def lines(n: int) -> list[str]:
    out = []
    for i in range(n):
        tenant = tenant_of(i)
        metadata = {"tenant": tenant, "feature": TENANTS[tenant]} if tenant else {"other": "x"}
        body = {
            "model": "gpt-4.1" if i % 2 else "deepseek-chat",
            "max_tokens": 30 + i,
            "messages": [{"role": "user", "content": f"attribute {i} " + "words " * i}],
        }
        line = {"custom_id": f"t{i:03d}", "method": "POST", "url": "/v1/chat/completions"}
        out.append(json.dumps(line | {"body": body, "metadata": metadata}))
    return out


@dataclass
class Finished:
    batch_id: str
    results: list[dict[str, Any]]


def run_batch(local: Local, name: str, jsonl: list[str]) -> Finished:
    """``jsonl`` submitted, run to the end and collected."""
    path = local.workdir / f"{name}.jsonl"
    path.write_text("\n".join(jsonl) + "\n")
    batch = local.json("submit", str(path))["batch_id"]
    # each look is a whole `status` command against moto's server: every 0.5 s, not
    # more, and two minutes for a loaded machine (CI's four test processes on two cores:
    # polled every 0.1 s, 60 s were not enough once)
    deadline = time.monotonic() + 120
    while not (status := local.json("status", batch))["done"]:
        assert time.monotonic() < deadline, f"batch did not finish: {status}"
        time.sleep(0.5)
    out = local.workdir / f"{name}-results.jsonl"
    local.json("collect", batch, "-o", str(out))
    results = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    assert len(results) == len(jsonl)
    return Finished(batch, results)


@pytest.fixture(scope="module")
def finished(local: Local) -> Finished:
    return run_batch(local, "jobs", lines(30))


def cost_records(local: Local, batch: str) -> list[CostRecord]:
    rt = local.rt
    lines = cost_lines(boto3.client("s3"), rt.resources.bucket, rt.batches, batch)
    return [CostRecord.model_validate_json(line) for line in lines]


def test_cost_records_carry_the_jobs_metadata(local: Local, finished: Finished) -> None:
    records = {r.custom_id: r for r in cost_records(local, finished.batch_id)}
    assert len(records) == 30
    for i in range(30):
        tenant = tenant_of(i)
        expected = {"tenant": tenant, "feature": TENANTS[tenant]} if tenant else {"other": "x"}
        assert records[f"t{i:03d}"].metadata == expected


def test_costs_by_metadata_tenant_match_the_results_per_tenant(
    local: Local, finished: Finished
) -> None:
    by_hand: dict[str, Decimal] = defaultdict(Decimal)
    jobs: dict[str, int] = defaultdict(int)
    for result in finished.results:
        tenant = tenant_of(int(result["custom_id"][1:])) or "(none)"
        by_hand[tenant] += Decimal(result["chatbatch"]["cost_usd"])
        jobs[tenant] += 1
    report = local.json("costs", "--batch", finished.batch_id, "--by", "metadata.tenant")
    assert report["by"] == "metadata.tenant"
    assert [g["key"] for g in report["groups"]] == [[None], ["acme"], ["globex"]]
    groups = {g["name"]: g for g in report["groups"]}
    assert set(groups) == {"acme", "globex", "(none)"}
    for tenant, usd in by_hand.items():
        assert Decimal(groups[tenant]["cost_usd"]) == usd, tenant
        assert groups[tenant]["jobs"] == jobs[tenant], tenant
    assert all(usd > 0 for usd in by_hand.values())
    human = local.cli("costs", "--batch", finished.batch_id, "--by", "metadata.tenant")
    assert "costs by metadata.tenant" in human.stdout and "globex" in human.stdout


def test_costs_combine_metadata_keys_with_fields(local: Local, finished: Finished) -> None:
    report = local.json(
        "costs",
        "--batch",
        finished.batch_id,
        "--by",
        "model",
        "--by",
        "metadata.tenant",
        "--by",
        "metadata.feature",
    )
    assert report["by"] == "model,metadata.tenant,metadata.feature"
    by_hand: dict[str, Decimal] = defaultdict(Decimal)
    for result in finished.results:
        tenant = tenant_of(int(result["custom_id"][1:]))
        feature = TENANTS[tenant] if tenant else "(none)"
        name = " / ".join([result["chatbatch"]["model"], tenant or "(none)", feature])
        by_hand[name] += Decimal(result["chatbatch"]["cost_usd"])
    assert {g["name"]: Decimal(g["cost_usd"]) for g in report["groups"]} == by_hand


def test_groups_whose_joined_names_look_alike_stay_apart(local: Local) -> None:
    """Groups are keyed by their values, not by the values joined: ``acme / eu`` + ``search``
    and ``acme`` + ``eu / search`` are two groups, and a tenant literally named ``(none)``
    is not the jobs without one. ``--json`` gives each group's values as a list (null:
    none)."""
    metadata = [
        {"org": "acme / eu", "team": "search"},
        {"org": "acme", "team": "eu / search"},
        {"org": "(none)", "team": "x"},
        {"team": "x"},
        {"team": "x"},
    ]
    jsonl = [
        json.dumps(
            {
                "custom_id": f"c{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "deepseek-chat", "max_tokens": 10 + i, "messages": [msg]},
                "metadata": meta,
            }
        )
        for i, meta in enumerate(metadata)
        for msg in [{"role": "user", "content": f"collide {i} " + "words " * i}]
    ]
    done = run_batch(local, "collide", jsonl)
    by_hand: dict[tuple[str | None, ...], Decimal] = defaultdict(Decimal)
    for result in done.results:
        meta = metadata[int(result["custom_id"][1:])]
        by_hand[(meta.get("org"), meta.get("team"))] += Decimal(result["chatbatch"]["cost_usd"])
    by = ["--by", "metadata.org", "--by", "metadata.team"]
    report = local.json("costs", "--batch", done.batch_id, *by)
    assert len(report["groups"]) == 4
    assert {tuple(g["key"]): Decimal(g["cost_usd"]) for g in report["groups"]} == by_hand
    assert [(g["key"], g["name"], g["jobs"]) for g in report["groups"]] == [
        ([None, "x"], "(none) / x", 2),
        (["(none)", "x"], "(none) / x", 1),
        (["acme", "eu / search"], "acme / eu / search", 1),
        (["acme / eu", "search"], "acme / eu / search", 1),
    ]


def test_a_bad_by_is_a_usage_error_naming_it(local: Local) -> None:
    bad = local.cli("costs", "--by", "tenant", code=2)
    assert "--by 'tenant'" in bad.output and "metadata.KEY" in bad.output
    empty = local.cli("costs", "--by", "metadata.", code=2)
    assert "a metadata key has 1 to 64 characters" in empty.output


def moto_api(local: Local, path: str, body: dict[str, Any]) -> None:
    """A call to moto's own API on the runtime's server (seeding answers, state machines)."""
    endpoint = boto3.client("s3").meta.endpoint_url
    reply = httpx.post(f"{endpoint}/moto-api/{path}", json=body)
    assert reply.status_code in (200, 201), reply.text


def seed_athena(local: Local, rows: list[dict[str, Any]]) -> None:
    """moto's Athena answers the next query with ``rows``, as Athena sends them: a header
    row, then every value as text (a boolean as ``true``/``false``, NULL as no value)."""

    def cell(value: Any) -> dict[str, str]:
        if value is None:
            return {}
        return {"VarCharValue": str(value).lower() if isinstance(value, bool) else str(value)}

    names = list(rows[0]) if rows else []
    table = [{"Data": [cell(n) for n in names]}]
    table += [{"Data": [cell(row[n]) for n in names]} for row in rows]
    region = boto3.client("athena").meta.region_name
    moto_api(
        local,
        "static/athena/query-results",
        {"region": region, "results": [{"rows": table, "column_info": []}]},
    )


def test_costs_athena_prints_the_s3_report_from_athenas_answer(
    local: Local, finished: Finished
) -> None:
    """The SQL ``--athena`` sends, run over the batch's records (SQLite standing in for
    Athena), seeded as moto's answer: the CLI polls, reads and prints the report the S3
    reader adds up, and the query moto received is that SQL in the stack's workgroup."""
    stack = local.rt.config.stack_name
    athena = boto3.client("athena")
    athena.create_work_group(Name=costs_workgroup(stack))  # what the stack deploys
    by = ["--by", "metadata.tenant", "--by", "model"]
    database = costs_database(stack)
    sql = report_sql(
        database, COSTS_TABLE, Grouping.parse(["metadata.tenant", "model"]), batch=finished.batch_id
    )
    records = [r.model_dump(mode="json") for r in cost_records(local, finished.batch_id)]
    rows = athena_sqlite.run(sql, database, COSTS_TABLE, records)
    assert len(rows) == 4  # acme: deepseek-chat, globex: gpt-4.1, (none): both
    seed_athena(local, rows)
    seed_athena(local, rows)
    # the query is QUEUED, then RUNNING for a few polls before it SUCCEEDS
    transition = {"progression": "manual", "times": 2}
    moto_api(
        local,
        "state-manager/set-transition",
        {"model_name": "athena::execution", "transition": transition},
    )
    try:
        via_athena = local.json("costs", "--athena", "--batch", finished.batch_id, *by)
        human = local.cli("costs", "--athena", "--batch", finished.batch_id, *by)
    finally:
        moto_api(local, "state-manager/unset-transition", {"model_name": "athena::execution"})
    via_s3 = local.json("costs", "--batch", finished.batch_id, *by)

    def figures(report: dict[str, Any]) -> dict[str, Any]:
        groups = {
            tuple(g["key"]): (
                g["name"],
                g["jobs"],
                g["prompt_tokens"],
                g["completion_tokens"],
                Decimal(g["cost_usd"]),
            )
            for g in report["groups"]
        }
        return {
            "groups": groups,
            "total": Decimal(report["total_usd"]),
            "jobs": report["jobs"],
            "days": report["days"],
            "by": report["by"],
        }

    assert figures(via_athena) == figures(via_s3)
    assert {g["key"][0] for g in via_athena["groups"]} == {"acme", "globex", None}
    execution = athena.get_query_execution(QueryExecutionId=via_athena["athena_query_id"])
    sent = execution["QueryExecution"]
    assert sent["Query"] == sql
    assert sent["WorkGroup"] == costs_workgroup(stack)
    assert sent["QueryExecutionContext"] == {"Database": database}
    assert "costs by metadata.tenant,model" in human.stdout
    assert "added up by Athena: query" in human.output  # on stderr, beside the table
    for group in via_s3["groups"]:
        assert group["name"].split(" / ")[0] in human.stdout
