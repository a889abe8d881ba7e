"""A batch with sharded counters (``scale.target_jobs_per_s`` high enough for several)
through the local runtime: it runs to completion, ``status`` and ``batches`` give its
totals, the Batch Completed event fires once with its counts, and the invocations' additions
landed on several shard items, none on the meta item."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import boto3
import pytest
from typer.testing import CliRunner

from chatbatch.cli.app import app
from chatbatch.client.flush_objects import cost_lines
from chatbatch.core import scale
from chatbatch.core.config import Config
from chatbatch.core.pricing import from_nanos
from chatbatch.core.resources import TABLE_PK
from chatbatch.local.options import LocalOptions
from chatbatch.local.runtime import LocalRuntime
from chatbatch.local.simulator import FaultKind, SimulatorSettings
from chatbatch.state.batches import BatchInfo, batch_key
from chatbatch.state.ddb import plain, scan_items
from tests.integration.test_events import (
    check_event,
    drain,
    event_sink,
    job_file,
    queues_empty,
    received,
    wait_for,
)

pytestmark = pytest.mark.slow

JOBS = 120  # test_events.check_event's total


@dataclass
class Run:
    info: BatchInfo
    events: list[dict[str, Any]]
    shards: dict[str, dict[str, Any]]  # the batch's shard items by partition key
    meta: dict[str, Any]
    status: dict[str, Any]
    listed: dict[str, Any]
    cost_nanos: int
    counter_shards: int


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, config: Config) -> Iterator[Run]:
    tmp = tmp_path_factory.mktemp("shards")
    wide = config.model_copy(
        update={
            "worker": config.worker.model_copy(update={"batch_size": 2, "batch_window_s": 0}),
            "scale": config.scale.model_copy(update={"target_jobs_per_s": 2_000}),
        }
    )
    config_path = tmp / "chatbatch.json"
    config_path.write_text(wide.model_dump_json())
    options = LocalOptions(
        config_path=config_path,
        concurrency=3,
        rpm=1_000_000,
        tpm=1_000_000_000,
        simulator=SimulatorSettings(latency_ms=50, fault_rates={FaultKind.bad_request: 0.15}),
        timeout_s=120,
    )
    with LocalRuntime(options) as rt:
        sink = event_sink()
        plan = rt.submit(job_file(tmp, JOBS, "s"))
        rt.wait(plan)
        events: list[dict[str, Any]] = []
        wait_for(lambda: received(sink, events, 1), 90, "the event")
        wait_for(lambda: queues_empty(rt), 120, "every copy and redelivery to end")
        events += drain(sink)
        info = rt.batches.get(plan.batch_id)
        assert info is not None
        ddb = boto3.client("dynamodb")
        meta = ddb.get_item(TableName=rt.resources.table, Key=batch_key(plan.batch_id))
        shards = {
            item[TABLE_PK]: item
            for item in scan_items(ddb, rt.resources.table, f"batch#{plan.batch_id}#", "count")
        }
        rt.register_stack()  # the CLI finds the deployment by its stack
        cli = CliRunner()

        def command(*args: str) -> Any:
            result = cli.invoke(app, [*args, "--json", "--config", str(config_path)])
            assert result.exit_code == 0, (result.stdout, result.exception)
            return json.loads(result.stdout)

        listed = {b["batch_id"]: b for b in command("batches")["batches"]}
        lines = cost_lines(boto3.client("s3"), rt.resources.bucket, rt.batches, plan.batch_id)
        yield Run(
            info=info,
            events=events,
            shards=shards,
            meta=plain(meta["Item"]),
            status=command("status", plan.batch_id),
            listed=listed[plan.batch_id],
            cost_nanos=sum(int(json.loads(line)["cost_nanos"]) for line in lines),
            counter_shards=scale.plan(wide).counter_shards,
        )


def test_the_batch_completes_once_with_its_counts(run: Run) -> None:
    assert run.counter_shards >= 2
    info = run.info
    assert info.counter_shards == run.counter_shards and info.complete
    assert len(run.events) == 1, run.events
    check_event(run.events[0], info, run.cost_nanos)
    assert info.failed > 0  # the 400s, counted on the shards too


def test_the_additions_landed_on_several_shards_and_none_on_the_meta_item(run: Run) -> None:
    assert len(run.shards) >= 2, run.shards
    assert all(pk.rsplit("#c", 1)[1].isdigit() for pk in run.shards)
    assert all(int(pk.rsplit("#c", 1)[1]) < run.counter_shards for pk in run.shards)
    assert "succeeded" not in run.meta and "failed" not in run.meta
    assert run.meta["counter_shards"] == run.counter_shards
    summed = sum(int(s.get("succeeded", 0)) + int(s.get("failed", 0)) for s in run.shards.values())
    assert summed == JOBS


def test_status_and_batches_give_the_totals(run: Run) -> None:
    info, status, listed = run.info, run.status, run.listed
    assert (status["succeeded"], status["failed"]) == (info.succeeded, info.failed), status
    assert status["total"] == JOBS
    assert listed["done"] == info.succeeded, listed
    assert listed["failed"] == info.failed + info.dead_lettered, listed
    assert Decimal(status["cost_usd"]) == Decimal(listed["cost_usd"]) == from_nanos(info.cost_nanos)
    assert listed["state"] == "complete", listed
