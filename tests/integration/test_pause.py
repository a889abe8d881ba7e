"""Account-level errors through the local runtime: the model pauses, nothing fails.

A wrong key (the simulator answering OpenAI's 401) or an exhausted quota (429
``insufficient_quota``) opens the model's breaker for every worker; jobs are handed back
as ``paused`` (no receive count burnt, no reservation held); fixing the account and
``resume`` (or a probe) finishes them all.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import pytest

from chatbatch.core.pricing import to_nanos
from chatbatch.local.options import LocalOptions
from chatbatch.local.runtime import LocalRuntime
from chatbatch.local.simulator import SimulatorSettings
from chatbatch.state import breaker as breaker_module
from chatbatch.state.breaker import Breakers
from chatbatch.state.budget.budget import Budget
from chatbatch.state.limiter.limiter import RateLimiter
from chatbatch.worker import pause as pause_module

pytestmark = pytest.mark.slow

MODEL = "deepseek-chat"


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hand-backs of seconds and a probe every 3 s, so a test waits seconds, not minutes."""
    monkeypatch.setattr(pause_module, "PAUSE_BASE_S", 1)
    monkeypatch.setattr(breaker_module, "PROBE_EVERY_S", 3.0)
    monkeypatch.setattr(breaker_module, "CACHE_S", 0.5)


def _jobs(tmp_path: Path, count: int) -> Path:
    path = tmp_path / "jobs.jsonl"
    lines = [
        json.dumps({"custom_id": f"a{i}", "prompt": f"question {i}", "max_tokens": 16})
        for i in range(count)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


@contextmanager
def _runtime(**options: Any) -> Iterator[LocalRuntime]:
    with LocalRuntime(LocalOptions(**options)) as rt:
        yield rt


def _breakers(rt: LocalRuntime) -> Breakers:
    return Breakers(boto3.client("dynamodb"), rt.resources.table)


def _assert_books(rt: LocalRuntime, cost_nanos: int) -> None:
    """Every reservation a paused job took was released: only the answers are spent."""
    usage = Budget(boto3.client("dynamodb"), rt.resources.table, rt.config).usage()
    assert usage.reserved_usd == 0
    assert to_nanos(usage.spent_usd) == cost_nanos > 0


def test_a_wrong_key_pauses_the_model_and_resume_finishes_every_job(tmp_path: Path) -> None:
    path = _jobs(tmp_path, 12)
    sim = SimulatorSettings(account_errors={"*": "invalid_api_key"})
    with _runtime(simulator=sim, timeout_s=60) as rt:
        assert rt.simulator is not None
        summary = rt.run(path, tmp_path / "out")
        assert (summary.failed, summary.succeeded, summary.dead_lettered) == (0, 0, 0)
        assert summary.paused == 12
        [open_] = _breakers(rt).list_open()
        assert (open_.model, open_.reason, open_.status) == (MODEL, "auth", 401)
        assert "Incorrect API key" in open_.message and open_.code == "invalid_api_key"
        # every waiting job has a line that says why, and what to do
        waiting = [json.loads(line) for line in (tmp_path / "out" / "errors.jsonl").open()]
        assert len(waiting) == 12
        assert {line["error"]["code"] for line in waiting} == {"paused"}
        message = waiting[0]["error"]["message"]
        assert "Incorrect API key" in message and f"chatbatch resume {MODEL}" in message
        # the jobs in flight when it opened each made a call; while paused, the handed-back
        # copies come round again (1 s, 2 s, 4 s) and only one probe per 3 s calls
        before = rt.simulator.stats().requests
        time.sleep(6)
        assert rt.simulator.stats().requests - before <= 3
        assert _breakers(rt).list_open()[0].since == open_.since

        rt.simulator.configure(account_errors={})  # the key is fixed
        assert _breakers(rt).close(MODEL)  # chatbatch resume
        plan = rt.submit(path)  # same batch id and ids: nothing is sent twice
        info = rt.wait(plan, until=lambda i, p: i.succeeded >= p.valid)
        assert (info.succeeded, info.failed, info.paused, info.dead_lettered) == (12, 0, 0, 0)
        assert _breakers(rt).list_open() == []
        _assert_books(rt, info.cost_nanos)


def test_insufficient_quota_pauses_without_touching_the_rate_limit_and_a_probe_lifts_it(
    tmp_path: Path,
) -> None:
    path = _jobs(tmp_path, 8)
    sim = SimulatorSettings(account_errors={"*": "insufficient_quota"})
    with _runtime(simulator=sim, timeout_s=60) as rt:
        assert rt.simulator is not None
        summary = rt.run(path, tmp_path / "out")
        assert (summary.failed, summary.paused) == (0, 8)
        [open_] = _breakers(rt).list_open()
        assert (open_.reason, open_.status, open_.code) == ("quota", 429, "insufficient_quota")
        limiter = RateLimiter(boto3.client("dynamodb"), rt.resources.table, rt.config)
        assert limiter.status(MODEL).factor == 1.0, "a quota 429 is not a rate limit"

        rt.simulator.configure(account_errors={})  # credit added; nobody runs resume
        plan = rt.submit(path)
        info = rt.wait(plan, until=lambda i, p: i.succeeded >= p.valid)
        assert (info.succeeded, info.failed, info.paused) == (8, 0, 0)
        assert _breakers(rt).list_open() == [], "a probe that succeeded closed the breaker"
        _assert_books(rt, info.cost_nanos)
