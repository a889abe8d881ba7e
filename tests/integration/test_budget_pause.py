"""A spent day's budget pauses the pipeline instead of cycling jobs through the queues.

Through the local runtime: a tiny daily budget and a few hundred jobs. The budget runs
out, the worker opens the budget pause and switches every queue's consumer off (the
emulator's pollers honour the same switch a deployment's event source mappings are), so
nothing is received while paused; no job is lost. ``chatbatch budget set --daily``
raises the limit and lifts the pause, and every job finishes; a run whose clock crosses
UTC midnight resumes by itself (the hourly resume schedule, on the runtime's clock).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import boto3
import pytest
from typer.testing import CliRunner

from chatbatch.cli.app import app
from chatbatch.core.days import next_midnight
from chatbatch.local.options import LocalOptions
from chatbatch.local.runtime import LocalRuntime
from chatbatch.local.summary import Summary
from chatbatch.state.budget.budget import Budget
from chatbatch.state.budget.pause import BudgetPause
from chatbatch.state.queue_switch import TableSwitch
from chatbatch.worker import budget_pause, services
from tests.integration.clocks import ShiftedClock

pytestmark = pytest.mark.slow
runner = CliRunner()


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch, quick_deferrals: None) -> None:
    """Jobs handed back while pausing come round after 1 s, not 60; jobs deferred because
    reservations in flight hold the room look again sooner (``quick_deferrals``)."""
    monkeypatch.setattr(budget_pause, "PAUSED_DELAY_S", 1)


def _jobs(tmp_path: Path, count: int) -> Path:
    path = tmp_path / "jobs.jsonl"
    priorities = ["critical", "high", "normal", "low"]
    lines = [
        json.dumps(
            {
                "custom_id": f"p{i:04d}",
                "prompt": f"question {i}",
                "max_tokens": 16,
                "priority": priorities[i % 4],
            }
        )
        for i in range(count)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


@contextmanager
def _runtime(clock: Any = time.time, **options: Any) -> Iterator[LocalRuntime]:
    with LocalRuntime(LocalOptions(**options), clock=clock) as rt:
        yield rt


def _receives(rt: LocalRuntime) -> int:
    return rt.aws_calls.calls[("sqs", "ReceiveMessage")]


def _waiting(rt: LocalRuntime) -> int:
    """Jobs in the queues (visible, in flight, delayed) and in the feeders' backlogs."""
    sqs = boto3.client("sqs")
    names: Any = [
        "ApproximateNumberOfMessages",
        "ApproximateNumberOfMessagesNotVisible",
        "ApproximateNumberOfMessagesDelayed",
    ]
    queued = sum(
        int(v)
        for url in rt.resources.queues.values()
        for v in sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names)["Attributes"].values()
    )
    return queued + sum(len(f.backlog) for f in rt.feeders.values())


def _assert_paused_and_silent(rt: LocalRuntime, total: int, batch_id: str) -> int:
    """Paused for the day's budget, consumers off, ~no receive for 3 s, nothing lost;
    returns how many jobs were answered."""
    pause = BudgetPause(boto3.client("dynamodb"), rt.resources.table).get()
    assert pause is not None and pause.reason == "daily_budget"
    assert "daily budget" in pause.message
    assert pause.until == next_midnight(pause.since).timestamp()
    assert not TableSwitch(boto3.client("dynamodb"), rt.resources.table).enabled()
    before = _receives(rt)
    time.sleep(3)
    assert _receives(rt) - before == 0, "nothing is received while paused"
    info = rt.batches.get(batch_id)
    assert info is not None and (info.failed, info.dead_lettered) == (0, 0)
    assert 0 < info.succeeded < total
    # nothing lost: every job answered, or waiting in a queue or the local backlog
    assert info.succeeded + _waiting(rt) == total
    return info.succeeded


def test_a_spent_budget_pauses_the_queues_and_budget_set_resumes_them(tmp_path: Path) -> None:
    total = 120
    path = _jobs(tmp_path, total)
    with _runtime(budget_usd=Decimal("0.00025"), timeout_s=300) as rt:
        plan = rt.submit(path)
        rt.wait(plan, until=lambda i, p: rt.budget_paused())
        answered = _assert_paused_and_silent(rt, total, plan.batch_id)
        rt.register_stack()  # the CLI finds the runtime as it finds a deployment
        config_file = tmp_path / "chatbatch.json"
        config_file.write_text(rt.config.model_dump_json())
        shown = runner.invoke(app, ["budget", "--json", "--config", str(config_file)])
        assert shown.exit_code == 0, shown.output
        view = json.loads(shown.stdout)
        assert view["pause"]["reason"] == "daily_budget"
        assert Decimal(view["usage"]["limit_usd"]) == Decimal("0.00025")
        status = runner.invoke(app, ["status", "--config", str(config_file)])
        assert "PAUSED since" in status.stdout and "daily budget" in status.stdout
        bad = runner.invoke(app, ["budget", "set", "--daily", "-1", "--config", str(config_file)])
        assert bad.exit_code != 0 and "positive amount in USD" in bad.output

        raised = runner.invoke(
            app, ["budget", "set", "--daily", "5", "--json", "--config", str(config_file)]
        )
        assert raised.exit_code == 0, raised.output
        assert json.loads(raised.stdout)["resumed"] is True
        info = rt.wait(plan, until=lambda i, p: i.succeeded >= p.valid)
        assert answered < info.succeeded == total
        assert (info.failed, info.dead_lettered, info.deferred) == (0, 0, 0)
        budget = Budget(boto3.client("dynamodb"), rt.resources.table, rt.config)
        assert budget.usage().reserved_usd == 0
        assert BudgetPause(boto3.client("dynamodb"), rt.resources.table).get() is None


def test_a_paused_run_resumes_by_itself_when_the_utc_day_resets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = ShiftedClock()
    monkeypatch.setattr(services, "Budget", partial(Budget, clock=clock))
    monkeypatch.setattr(services, "BudgetPause", partial(BudgetPause, clock=clock))
    midnight = next_midnight(time.time() + 3 * 86_400).timestamp()
    clock.at(midnight - 600)
    total = 50  # about 28 fit in a day's $0.0003, the rest after midnight
    path = _jobs(tmp_path, total)
    with _runtime(clock=clock, budget_usd=Decimal("0.0003"), timeout_s=300) as rt:
        plan = rt.submit(path)
        rt.wait(plan, until=lambda i, p: rt.budget_paused())
        _assert_paused_and_silent(rt, total, plan.batch_id)
        clock.at(midnight + 1)  # a new UTC day: the hourly schedule lifts the pause
        info = rt.wait(plan, until=lambda i, p: i.succeeded >= p.valid)
        assert info.succeeded == total and (info.failed, info.dead_lettered) == (0, 0)
        assert BudgetPause(boto3.client("dynamodb"), rt.resources.table).get() is None
        assert TableSwitch(boto3.client("dynamodb"), rt.resources.table).enabled()
        assert rt.schedule is not None
        assert {"resumed": "the UTC day reset"} in rt.schedule.fired


def test_a_job_over_the_whole_daily_limit_waits_alone_and_pauses_nothing(tmp_path: Path) -> None:
    """Its worst case alone ($0.0034) is above the day's $0.002: no spending leaves room
    for it. It alone is deferred (for a higher limit); the pipeline is not paused, the
    others all run, and the run ends."""
    path = tmp_path / "jobs.jsonl"
    big = {"custom_id": "big", "prompt": "a long essay", "max_tokens": 8000, "priority": "critical"}
    small = [
        {"custom_id": f"s{i}", "prompt": f"q{i}", "max_tokens": 16, "priority": "low"}
        for i in range(20)
    ]
    path.write_text("".join(json.dumps(job) + "\n" for job in [big, *small]))
    out = tmp_path / "out"
    with _runtime(budget_usd=Decimal("0.002"), timeout_s=120) as rt:
        summary = rt.run(path, out)
        assert BudgetPause(boto3.client("dynamodb"), rt.resources.table).get() is None
        assert TableSwitch(boto3.client("dynamodb"), rt.resources.table).enabled()
    assert (summary.succeeded, summary.failed, summary.deferred) == (20, 0, 1)
    assert summary.budget_paused_until is None
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert [(e["custom_id"], e["error"]["code"]) for e in errors] == [("big", "deferred")]


def test_a_resumed_run_with_a_larger_budget_answers_the_jobs_the_pause_left(
    tmp_path: Path,
) -> None:
    """Two runs in one process on one state directory (as ``local run`` twice on one
    --out): the first pauses on its budget; the second, with a larger one, lifts the pause
    at start-up (with its own config, not the first run's) and waits for every job, not
    returning on the deferred ones. Both run on one new thread, as a caller's own thread
    would hold a worker instance made by the first run."""
    total = 60
    path = _jobs(tmp_path, total)
    out = tmp_path / "out"

    def two_runs() -> tuple[Summary, list[Any]]:
        with _runtime(budget_usd=Decimal("0.0003"), timeout_s=120, state_dir=out / ".state") as rt:
            first = rt.run(path, out)
            assert first.budget_paused_until is not None and 0 < first.succeeded < total
        with _runtime(budget_usd=Decimal("5"), timeout_s=120, state_dir=out / ".state") as rt:
            assert rt.schedule is not None
            fired = list(rt.schedule.fired)
            return rt.run(path, out), fired

    with ThreadPoolExecutor(1) as caller:
        second, fired = caller.submit(two_runs).result()
    assert fired == [{"resumed": "the daily limit was raised"}]
    assert (second.succeeded, second.deferred, second.failed) == (total, 0, 0)
    assert second.budget_paused_until is None
    results = (out / "results.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["custom_id"] for line in results) == [
        f"p{i:04d}" for i in range(total)
    ]
