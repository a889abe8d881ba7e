"""Invocations of more than ten jobs (``worker.batch_size`` up to 100, within a batching
window), end to end through the local runtime: every job answered once, its result and
cost record once, the ledger equal to the records and to the batch's counters, nothing
left reserved and no open marker, while an invocation's group commit takes more items
than one DynamoDB transaction holds (``worker/finals.py`` splits it).

The jobs are the kind that break such systems: some without ``max_tokens`` (reserved at
the model's cap), ``n`` > 1, tools, a JSON schema, content parts, a tiny and a long
prompt; two batches at once, one of them over three priorities.
"""

from __future__ import annotations

import json
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import pytest

from bench._common import watched
from chatbatch.core.config import Config
from chatbatch.core.days import utc_day
from chatbatch.local.options import LocalOptions
from chatbatch.local.runtime import LocalRuntime
from chatbatch.local.simulator import SimulatorSettings
from chatbatch.state.batches import Batches
from chatbatch.state.queue_switch import TableSwitch
from tests.integration.test_flush_objects import lines_under
from tests.integration.test_pipeline import ledger_spent

BATCH_SIZE = 60  # 120 items of the jobs' own in one invocation: two transactions


def body(tag: str) -> dict[str, Any]:
    i = int(tag[1:])
    kinds: list[dict[str, Any]] = [
        {"prompt": f"q{tag}", "max_tokens": 20},
        {"prompt": f"no cap {tag}"},  # reserved at the model's own cap
        {"prompt": f"two {tag}", "n": 2, "max_tokens": 10},
        {
            "messages": [{"role": "user", "content": [{"type": "text", "text": f"parts {tag}"}]}],
            "max_tokens": 15,
        },
        {
            "prompt": f"tool {tag}",
            "max_tokens": 30,
            "tools": [
                {
                    "type": "function",
                    "function": {
                        "name": "lookup",
                        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
                    },
                }
            ],
        },
        {
            "prompt": f"schema {tag}",
            "max_tokens": 30,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "s", "schema": {"type": "object"}},
            },
        },
        {"prompt": tag, "max_tokens": 1},
        {"prompt": " ".join(["long"] * 3000) + f" {tag}", "max_tokens": 5},
    ]
    return kinds[i % len(kinds)]


def write(path: Path, prefix: str, n: int, priorities: tuple[str, ...]) -> Path:
    path.write_text(
        "".join(
            json.dumps(
                {"custom_id": f"{prefix}{i:03d}", "priority": priorities[i % len(priorities)]}
                | body(f"{prefix}{i:03d}")
            )
            + "\n"
            for i in range(n)
        )
    )
    return path


def open_markers(rt: LocalRuntime) -> int:
    reply = boto3.client("dynamodb").query(
        TableName=rt.resources.table,
        KeyConditionExpression="pk = :pk",
        ExpressionAttributeValues={":pk": {"S": f"budget#open#{utc_day()}"}},
    )
    return len(reply["Items"])


def test_invocations_of_sixty_jobs_settle_each_job_once(
    tmp_path: Path, config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    commits: list[tuple[int, bool]] = []  # the group commits: items, committed
    real = Batches.commit

    def commit(self: Batches, items: Any) -> bool:
        committed = False
        try:
            committed = real(self, items)
            return committed
        finally:  # one DynamoDB refuses (more than 100 items) counts as not committed
            commits.append((len(items), committed))

    monkeypatch.setattr(Batches, "commit", commit)
    big = config.model_copy(
        update={
            "worker": config.worker.model_copy(
                update={"batch_size": BATCH_SIZE, "batch_window_s": 1}
            )
        }
    )
    config_path = tmp_path / "chatbatch.json"
    config_path.write_text(big.model_dump_json())
    options = LocalOptions(
        config_path=config_path,
        concurrency=2,
        simulator=SimulatorSettings(latency_ms=200, open_answer_tokens=200),
        timeout_s=240,
    )
    files = {"one": ("o", 140, ("normal",)), "mixed": ("m", 60, ("critical", "normal", "low"))}
    with watched() as seen, LocalRuntime(options) as rt:
        # the mappings held off until the queues are full, so the first invocations take
        # as many jobs as the batch size lets them (not what had arrived at their receive)
        switch = TableSwitch(boto3.client("dynamodb"), rt.resources.table)
        switch.set_enabled(False)
        plans = [
            rt.submit(write(tmp_path / f"{b}.jsonl", prefix, n, prios), b)
            for b, (prefix, n, prios) in files.items()
        ]
        for feeder in rt.feeders.values():
            feeder.pump()
        switch.set_enabled(True)
        infos = {plan.batch_id: rt.wait(plan) for plan in plans}
        spent = ledger_spent(rt)
        assert rt.simulator is not None
        stats = rt.simulator.stats()
        records = {b: lines_under(rt, f"costs/dt={utc_day()}/{b}/") for b in files}
        results = {b: lines_under(rt, f"results/{b}/") for b in files}
        markers = open_markers(rt)
    big = [len(b) for b in seen.batches if len(b) > 45]
    assert big, "invocations of more than 45 jobs: more than 90 items of their own"
    assert all(size <= 100 and ok for size, ok in commits), commits
    assert len(commits) >= 2 * len(big), "each large group in several transactions"
    for batch, (prefix, n, _) in files.items():
        want = Counter(f"{prefix}{i:03d}" for i in range(n))
        assert Counter(r["custom_id"] for _, r in results[batch]) == want, "one result each"
        assert Counter(r["custom_id"] for _, r in records[batch]) == want, "one record each"
        info = infos[batch]
        assert info is not None and info.succeeded == n and info.failed == 0
        assert info.cost_nanos == sum(
            round(Decimal(r["cost_usd"]) * 10**9) for _, r in records[batch]
        )
    assert (stats.requests, stats.completions, stats.duplicates) == (200, 200, 0), "once each"
    booked = sum(Decimal(r["cost_usd"]) for rs in records.values() for _, r in rs)
    assert spent == booked, "the day's ledger is the records' sum, nothing reserved"
    assert markers == 0, "every group marker closed"
