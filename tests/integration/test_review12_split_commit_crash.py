"""Adversarial review of invocations of up to 100 jobs, end to end through the local
runtime: the worker dies between two transactions of one group commit (the first
committed, the second never sent). Every job is still called once and has one result
and one cost record; the ledger is the records' sum with nothing reserved; the dead
group's marker stays until ``reclaim`` finds it past its deadline and deletes it.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import pytest

from chatbatch.core.config import Config
from chatbatch.core.days import utc_day
from chatbatch.local.options import LocalOptions
from chatbatch.local.runtime import LocalRuntime
from chatbatch.local.simulator import SimulatorSettings
from chatbatch.state.budget.budget import Budget
from chatbatch.state.queue_switch import TableSwitch
from chatbatch.worker import finals
from chatbatch.worker.crash import WorkerCrash
from chatbatch.worker.finals import Finals
from tests.integration.test_flush_objects import lines_under
from tests.integration.test_large_batches import open_markers
from tests.integration.test_pipeline import ledger_spent

# One invocation or a few, each in several transactions: few enough jobs that a loaded
# machine (CI's four test processes on two cores) ends them well before ``timeout_s``. A
# call still out at the invocation's deadline is paid for, its answer never read: booked
# as an unread call and made again (right, but not this test's path: at 60 jobs and 15 s,
# 5 loaded runs in 36 did that and failed "one record each").
JOBS = 30


def test_a_worker_dead_between_two_group_transactions_counts_each_job_once(
    tmp_path: Path, config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    crashed: list[int] = []  # the jobs of the transaction the worker died before
    parts: list[int] = []  # every group transaction's jobs
    real = Finals._commit

    async def commit(self: Finals, part: list[Any]) -> None:
        parts.append(len(part))
        if not crashed and self._committed:  # the group's second transaction, once
            crashed.append(len(part))
            raise WorkerCrash("died between two transactions of a group commit")
        await real(self, part)

    monkeypatch.setattr(Finals, "_commit", commit)
    # groups split at 12 items (about 5 jobs), whatever invocations the mapping makes
    monkeypatch.setattr(finals, "MAX_TRANSACT_ITEMS", 12)
    quick = config.model_copy(
        update={
            "worker": config.worker.model_copy(
                update={"batch_size": JOBS, "batch_window_s": 1, "timeout_s": 20}
            )
        }
    )
    config_path = tmp_path / "chatbatch.json"
    config_path.write_text(quick.model_dump_json())
    options = LocalOptions(
        config_path=config_path,
        concurrency=2,
        simulator=SimulatorSettings(latency_ms=50),
        visibility_timeout_s=2,
        timeout_s=120,
    )
    path = tmp_path / "jobs.jsonl"
    path.write_text(
        "".join(
            json.dumps({"custom_id": f"c{i:03d}", "prompt": f"q{i}", "max_tokens": 20}) + "\n"
            for i in range(JOBS)
        )
    )
    with LocalRuntime(options) as rt:
        switch = TableSwitch(boto3.client("dynamodb"), rt.resources.table)
        switch.set_enabled(False)  # large invocations
        plan = rt.submit(path, "big")
        for feeder in rt.feeders.values():
            feeder.pump()
        switch.set_enabled(True)
        info = rt.wait(plan)
        spent = ledger_spent(rt)
        assert rt.simulator is not None
        requests = rt.simulator.stats().requests
        records = lines_under(rt, f"costs/dt={utc_day()}/big/")
        results = lines_under(rt, "results/big/")
        left = open_markers(rt)
        later = Budget(
            boto3.client("dynamodb"),
            rt.resources.table,
            quick,
            clock=lambda: time.time() + quick.budget.reservation_ttl_s + 1,
        )
        reclaimed = later.reclaim(utc_day())
        after = open_markers(rt)
    assert crashed, f"the worker died between two transactions: {parts}"
    want = Counter(f"c{i:03d}" for i in range(JOBS))
    assert Counter(r["custom_id"] for _, r in results) == want, "one result each"
    assert Counter(r["custom_id"] for _, r in records) == want, "one record each"
    assert requests == JOBS, "no job called twice: the dead part recovered from its objects"
    assert info is not None and (info.succeeded, info.failed) == (JOBS, 0)
    booked = sum(Decimal(r["cost_usd"]) for _, r in records)
    assert info.cost_nanos == sum(round(Decimal(r["cost_usd"]) * 10**9) for _, r in records)
    assert spent == booked, "the ledger is the records' sum, nothing reserved"
    assert left <= 1, "at most the dead group's marker, for reclaim"
    assert (reclaimed, after) == (0, 0), "reclaim finds nothing open and deletes it"
