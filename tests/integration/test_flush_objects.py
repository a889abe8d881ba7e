"""Results and cost records written once per invocation (``worker/finals.py``): one object
per batch and per day and batch for the jobs of an invocation, the job's state item naming
the flush whose line counts; recovery from the object the reservation names after a crash
between the flush and the commit; readers that drop an orphan line.

Through the local runtime (moto, the simulator on loopback, the emulated mappings).
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import pytest
from typer.testing import CliRunner

from chatbatch.cli.app import app
from chatbatch.client.listing import list_keys
from chatbatch.core.config import Config
from chatbatch.core.days import utc_day
from chatbatch.local.options import LocalOptions
from chatbatch.local.runtime import LocalRuntime
from chatbatch.local.simulator import SimulatorSettings
from chatbatch.state.budget.ledger import reservation_key
from chatbatch.state.store import flush_cost_key, flush_of, flush_result_key, manifest_key
from chatbatch.worker import crash as crashes
from chatbatch.worker.intake import Intake
from tests.integration.test_pipeline import ledger_spent, runtime, write

runner = CliRunner()


def lines_under(rt: LocalRuntime, prefix: str) -> list[tuple[str, dict[str, Any]]]:
    """Every record of every object under ``prefix``: (its object's key, the record)."""
    s3, bucket = boto3.client("s3"), rt.resources.bucket
    found = []
    for key in list_keys(s3, bucket, prefix):
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
        found += [(key, json.loads(line)) for line in body.splitlines() if line.strip()]
    return found


def jobs(n: int) -> list[str]:
    return [json.dumps({"custom_id": f"f{i:02d}", "prompt": f"q{i}"}) for i in range(n)]


def ids(n: int) -> list[str]:
    return [f"f{i:02d}" for i in range(n)]


def test_a_run_puts_a_quarter_of_an_object_per_job_or_less(tmp_path: Path) -> None:
    """Each invocation writes one results object and one cost object for all its jobs:
    S3 PutObject per job ≤ 0.25 over 40 jobs (two per job before)."""
    with runtime(concurrency=2) as rt:
        summary = rt.run(write(tmp_path, jobs(40)), tmp_path / "out")
        spent = ledger_spent(rt)
        results = lines_under(rt, "results/")
        costs = lines_under(rt, "costs/")
        states = {j.custom_id: j for j in rt.batches.jobs("local", ids(40))}
    puts = summary.aws_requests["s3"]["PutObject"]
    print(f"PutObject: {puts} for 40 jobs ({puts / 40:.3f} per job)")
    assert summary.succeeded == 40 and spent == Decimal(str(summary.cost_usd))
    assert puts / 40 <= 0.25
    # one line per job in each, in the object of the flush its state names
    assert sorted(r["custom_id"] for _, r in results) == sorted(states)
    assert sorted(r["custom_id"] for _, r in costs) == sorted(states)
    for key, record in results + costs:
        assert flush_of(key) == states[record["custom_id"]].flush
    assert sum(Decimal(r["cost_usd"]) for _, r in costs) == spent


@pytest.fixture
def crash_after_flush() -> Iterator[set[str]]:
    """The worker dies once, after its invocation's objects are written and before its
    transaction (``after_s3_write``): the custom_ids of the invocation it killed."""
    crashed: set[str] = set()

    def crash(name: str, intake: Intake) -> bool:
        if name == "after_s3_write" and not crashed:
            crashed.add(intake.custom_id)
            return True
        return False

    crashes.crash_hook = crash
    try:
        yield crashed
    finally:
        crashes.crash_hook = None


def test_a_crash_between_the_flush_and_the_commit_recovers_from_the_object(
    tmp_path: Path, config: Config, crash_after_flush: set[str]
) -> None:
    """The worker dies after writing its jobs' objects and before their transaction. Each
    redelivered job finds its reservation armed with the dead invocation's flush id, reads
    its line from that object and commits it: no second call, one result line and one cost
    line per job (the recovered ones are not written again), each job's ``flush`` naming
    the object the reservation named."""
    reservations: dict[str, str | None] = {}  # the crashed job's, as the worker died
    dies = crashes.crash_hook
    assert dies is not None

    def crash(name: str, intake: Intake) -> bool:
        if name == "after_s3_write" and not crash_after_flush:
            item = boto3.client("dynamodb").get_item(
                TableName=table, Key=reservation_key(f"local#{intake.custom_id}")
            )["Item"]
            reservations[intake.custom_id] = item.get("flush", {}).get("S")
        return dies(name, intake)

    crashes.crash_hook = crash
    cfg = tmp_path / "chatbatch.json"
    quick = config.model_copy(update={"worker": config.worker.model_copy(update={"timeout_s": 10})})
    cfg.write_text(quick.model_dump_json())
    with runtime(visibility_timeout_s=2, config_path=cfg) as rt:
        table = rt.resources.table
        summary = rt.run(write(tmp_path, jobs(6)), tmp_path / "out")
        assert rt.simulator is not None
        calls = rt.simulator.stats().requests
        spent = ledger_spent(rt)
        results = lines_under(rt, "results/")
        costs = lines_under(rt, "costs/")
        states = {j.custom_id: j for j in rt.batches.jobs("local", ids(6))}
    [(crashed, flush)] = reservations.items()
    assert flush is not None, "the reservation names the invocation's flush"
    assert summary.succeeded == 6 and calls == 6, "no job was called twice"
    assert Counter(r["custom_id"] for _, r in results) == Counter(ids(6))
    assert Counter(r["custom_id"] for _, r in costs) == Counter(ids(6))
    assert states[crashed].flush == flush, "committed from the object its reservation named"
    recovered = {c for c, state in states.items() if state.flush == flush}
    assert recovered == {r["custom_id"] for key, r in results if flush_of(key) == flush}
    assert sum(Decimal(r["cost_usd"]) for _, r in costs) == spent == Decimal(str(summary.cost_usd))


def test_collect_and_costs_drop_an_orphan_line(tmp_path: Path, config: Config) -> None:
    """A copy whose transaction lost left its lines in objects of its own flush (planted
    here: another answer, another cost). ``collect`` (in manifest order, and by listing)
    returns every job once with its committed answer; ``costs`` counts its record once."""
    quick = config.model_copy(update={"worker": config.worker.model_copy(update={"batch_size": 4})})
    config_file = tmp_path / "chatbatch.json"
    config_file.write_text(quick.model_dump_json())
    options = LocalOptions(  # moto in this process: the CLI below reaches it too
        config_path=config_file, concurrency=2, simulator=SimulatorSettings(latency_ms=20)
    )

    def cli(*args: str) -> Any:
        result = runner.invoke(app, [*args, "--config", str(config_file), "--json"])
        assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
        return json.loads(result.stdout)

    batch = options.batch_id = "orphans"
    with LocalRuntime(options) as rt:
        rt.register_stack()
        summary = rt.run(write(tmp_path, jobs(12)), tmp_path / "out")
        assert summary.succeeded == 12
        committed = rt.result(batch, "f03")
        assert committed is not None and committed.response is not None
        s3, bucket = boto3.client("s3"), rt.resources.bucket
        keys = list(list_keys(s3, bucket, f"results/{batch}/"))
        assert len(keys) < 12 and all(flush_of(k) for k in keys), "one object per invocation"
        # the orphan: the same job answered otherwise, in a flush no state names
        orphan = committed.model_copy(deep=True)
        assert orphan.response is not None
        orphan.response.body["choices"][0]["message"]["content"] = "an orphan's answer"
        flush = uuid.uuid4().hex
        s3.put_object(
            Bucket=bucket, Key=flush_result_key(batch, flush), Body=orphan.to_line() + "\n"
        )
        day = utc_day()
        [cost] = [
            r for _, r in lines_under(rt, f"costs/dt={day}/{batch}/") if r["custom_id"] == "f03"
        ]
        doubled = cost | {"cost_usd": str(Decimal(cost["cost_usd"]) * 1000)}
        s3.put_object(
            Bucket=bucket,
            Key=flush_cost_key(day, batch, flush),
            Body=json.dumps(doubled) + "\n",
        )
        by_manifest = cli("collect", batch, "-o", str(tmp_path / "manifest.jsonl"))
        s3.delete_object(Bucket=bucket, Key=manifest_key(batch))
        by_listing = cli("collect", batch, "-o", str(tmp_path / "listing.jsonl"))
        report = cli("costs", "--batch", batch)
        info = rt.batches.get(batch)
    assert info is not None
    for name, collected in (("manifest", by_manifest), ("listing", by_listing)):
        assert (collected["source"], collected["results"], collected["errors"]) == (name, 12, 0)
        lines = [json.loads(t) for t in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
        assert sorted(line["custom_id"] for line in lines) == ids(12)
        [f03] = [line for line in lines if line["custom_id"] == "f03"]
        assert f03 == json.loads(committed.to_line()), "the committed answer, not the orphan"
    manifest_order = (tmp_path / "manifest.jsonl").read_text().splitlines()
    assert [json.loads(t)["custom_id"] for t in manifest_order] == ids(12)
    assert report["jobs"] == 12
    assert Decimal(str(report["total_usd"])) == Decimal(info.cost_nanos) / 10**9
