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
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import pytest

from bench._common import watched
from chatbatch.core.config import Config, Model
from chatbatch.core.days import utc_day
from chatbatch.local import runtime as runtime_module
from chatbatch.local.options import LocalOptions
from chatbatch.local.runtime import LocalRuntime
from chatbatch.local.simulator import SimulatorSettings, Stats
from chatbatch.state.batches import Batches, BatchInfo
from chatbatch.state.queue_switch import TableSwitch
from tests.integration.test_books import _priced
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


@dataclass
class LargeRun:
    """What a run of large invocations left: the invocations' sizes, the group commits
    (items, committed), each batch's info, cost records and result lines, the ledger's
    spent, the simulator's stats and the open markers left."""

    sizes: list[int]
    commits: list[tuple[int, bool]]
    infos: dict[str, BatchInfo]
    records: dict[str, list[tuple[str, dict[str, Any]]]]
    results: dict[str, list[tuple[str, dict[str, Any]]]]
    spent: Decimal
    stats: Stats
    markers: int
    models: dict[str, Model]


def run_large(
    tmp_path: Path,
    config: Config,
    monkeypatch: pytest.MonkeyPatch,
    files: Mapping[str, tuple[str, int, tuple[str, ...]]],
    simulator: SimulatorSettings,
) -> LargeRun:
    """``files`` (batch -> custom-id prefix, jobs, priorities in turn) through invocations
    of ``BATCH_SIZE``, the mappings held off until the queues are full (so the first
    invocations take as many jobs as the batch size lets them)."""
    commits: list[tuple[int, bool]] = []
    real = Batches.commit

    def commit(self: Batches, items: Any) -> bool:
        committed = False
        try:
            committed = real(self, items)
            return committed
        finally:  # one DynamoDB refuses (more than 100 items) counts as not committed
            commits.append((len(items), committed))

    monkeypatch.setattr(Batches, "commit", commit)
    # the whole window of 1 s, as Lambda waits it: a loaded machine's slow receives from
    # full queues still fill the first invocations (0.2 s locally otherwise)
    monkeypatch.setattr(runtime_module, "BATCH_WINDOW_CAP_S", 1.0)
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
        config_path=config_path, concurrency=2, simulator=simulator, timeout_s=240
    )
    with watched() as seen, LocalRuntime(options) as rt:
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
        assert rt.simulator is not None
        return LargeRun(
            sizes=[len(b) for b in seen.batches],
            commits=commits,
            infos=infos,
            records={b: lines_under(rt, f"costs/dt={utc_day()}/{b}/") for b in files},
            results={b: lines_under(rt, f"results/{b}/") for b in files},
            spent=ledger_spent(rt),
            stats=rt.simulator.stats(),
            markers=open_markers(rt),
            models={m.model_id: m for m in rt.config.models.values()},
        )


def test_invocations_of_sixty_jobs_settle_each_job_once(
    tmp_path: Path, config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = {"one": ("o", 140, ("normal",)), "mixed": ("m", 60, ("critical", "normal", "low"))}
    sim = SimulatorSettings(latency_ms=200, open_answer_tokens=200)
    run = run_large(tmp_path, config, monkeypatch, files, sim)
    big = [size for size in run.sizes if size > 45]
    assert big, "invocations of more than 45 jobs: more than 90 items of their own"
    assert all(size <= 100 and ok for size, ok in run.commits), run.commits
    assert len(run.commits) >= 2 * len(big), "each large group in several transactions"
    for batch, (prefix, n, _) in files.items():
        want = Counter(f"{prefix}{i:03d}" for i in range(n))
        assert Counter(r["custom_id"] for _, r in run.results[batch]) == want, "one each"
        assert Counter(r["custom_id"] for _, r in run.records[batch]) == want, "one each"
        info = run.infos[batch]
        assert info is not None and info.succeeded == n and info.failed == 0
        assert info.cost_nanos == nanos_of(run.records[batch])
    stats = run.stats
    assert (stats.requests, stats.completions, stats.duplicates) == (200, 200, 0), "once each"
    booked = sum(Decimal(r["cost_usd"]) for rs in run.records.values() for _, r in rs)
    assert run.spent == booked, "the day's ledger is the records' sum, nothing reserved"
    assert run.markers == 0, "every group marker closed"


def test_large_invocations_book_every_damaged_or_usage_less_answer(
    tmp_path: Path, config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every priority at once, answers cut short, corrupt, without usage, 500s: through
    invocations of 60, each job ends once with its answer, every call the simulator
    billed is booked (at the job's worst case when its usage never came), the ledger is
    the cost records' sum and the batch's counters, nothing is reserved or left marked."""
    files = {"all": ("a", 160, ("critical", "high", "normal", "low"))}
    faults = {"truncate": 0.06, "corrupt": 0.04, "no_usage": 0.06, "500": 0.04}
    sim = SimulatorSettings(latency_ms=150, open_answer_tokens=200, fault_rates=faults, seed=7)
    run = run_large(tmp_path, config, monkeypatch, files, sim)
    assert max(run.sizes) > 10, "invocations larger than ten jobs"
    assert all(size <= 100 for size, _ in run.commits), run.commits
    results = Counter(r["custom_id"] for _, r in run.results["all"])
    assert results == Counter(f"a{i:03d}" for i in range(160)), "each job one answer"
    info = run.infos["all"]
    assert info is not None and (info.succeeded, info.failed) == (160, 0)
    records = run.records["all"]
    assert info.cost_nanos == nanos_of(records)
    assert run.spent == sum(Decimal(r["cost_usd"]) for _, r in records)
    stats = run.stats
    assert stats.faults, "the faults were met"
    assert stats.duplicates == 0, "no answer delivered whole twice"
    # every billed generation has its record (the unread ones too), and none is booked
    # below what the simulator billed for it
    assert len(records) == stats.billed_calls
    billed = sum(_priced(u.model_dump(), run.models[m]) for m, u in stats.billed_by_model.items())
    assert run.spent >= billed
    assert run.markers == 0, "every group marker closed"


def nanos_of(records: list[tuple[str, dict[str, Any]]]) -> int:
    return sum(round(Decimal(r["cost_usd"]) * 10**9) for _, r in records)
