"""The open marker of a group of reservations (``Budget.reserve_many``) outlives every
reservation it names that is still open when the invocation ends: a job that raised after
taking its reservation (here on its last delivery, so nothing comes back for it) is still
found by ``reclaim`` after the TTL and booked at its worst case (its call went out).
From an adversarial review: the first version deleted the marker at the invocation's end
and the reservation stayed ``reserved`` on the ledgers for good."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import boto3
import pytest

from bench._common import base_config, runtime, write_config
from chatbatch.core.jobs import job_ref
from chatbatch.local.options import LocalOptions
from chatbatch.state.budget.budget import Budget
from chatbatch.state.budget.ledger import reservation_key
from chatbatch.worker import pipeline

pytestmark = pytest.mark.slow


def test_a_group_reservation_left_open_by_a_raising_job_is_still_reclaimed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = pipeline._succeed

    async def down_for_boom(inv: Any, intake: Any, *args: Any) -> Any:
        if intake.custom_id == "boom":  # answered, then the books are out of reach
            raise OSError("DynamoDB unreachable")
        return await real(inv, intake, *args)

    monkeypatch.setattr(pipeline, "_succeed", down_for_boom)
    jobs = [{"custom_id": c, "prompt": f"x {c}"} for c in ("ok0", "ok1", "boom")]
    path = tmp_path / "jobs.jsonl"
    path.write_text("".join(json.dumps(j) + "\n" for j in jobs))
    # one delivery: the first is the last, ``process`` dead-letters the job at once
    cfg = write_config(tmp_path / "chatbatch.json", base_config(), worker={"max_receive_count": 1})
    with runtime(LocalOptions(config_path=cfg, timeout_s=60, visibility_timeout_s=2)) as rt:
        summary = rt.run(path, tmp_path / "out")
        ddb, table = boto3.client("dynamodb"), rt.resources.table
        key = reservation_key(job_ref("local", "boom"))
        item = ddb.get_item(TableName=table, Key=key, ConsistentRead=True)["Item"]
        day, worst = item["day"]["S"], int(item["nanos"]["N"])
        grouped = "marker" in item
        later = time.time() + rt.config.budget.reservation_ttl_s + 60
        budget = Budget(ddb, table, rt.config, clock=lambda: later)
        before = budget.usage(day)
        reclaimed = budget.reclaim()
        after = budget.usage(day)
    assert (summary.succeeded, summary.dead_lettered) == (2, 1)
    assert grouped, "the three jobs reserved together"
    assert item["state"]["S"] == "reserved" and item["armed"]["BOOL"]
    assert reclaimed == 1 and after.reserved_usd == 0
    assert after.spent_usd * 10**9 == before.spent_usd * 10**9 + worst, "booked at its worst"
