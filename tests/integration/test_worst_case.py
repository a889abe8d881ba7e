"""The worst case bounds what the provider bills, end to end through the local runtime.

The simulator plays a provider that bills as much as a request allows: every answer runs
to the output cap it was sent, and a request sent without a cap is answered at the model's
own limit. Each test compares what the pipeline reserved and booked with what the
simulator billed (its own stats), never with the client's arithmetic.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import pytest

from chatbatch.core.config import Config, Model
from chatbatch.core.pricing import Usage, cost, from_nanos
from chatbatch.local.options import LocalOptions
from chatbatch.local.runtime import LocalRuntime
from chatbatch.local.simulator import SimulatorSettings, answer_for
from chatbatch.state.budget.budget import Budget
from chatbatch.state.budget.ledger import reservation_key
from tests.unit.prompt_corpus import big_tool

# every answer as long as its cap allows; no cap: the model's own (large) limit
GREEDY = SimulatorSettings(answer_tokens=100_000, open_answer_tokens=16_384)


@contextmanager
def runtime(tmp_path: Path, config: Config | None = None, **options: Any) -> Iterator[LocalRuntime]:
    if config is not None:
        path = tmp_path / "chatbatch.json"
        path.write_text(config.model_dump_json())
        options["config_path"] = path
    with LocalRuntime(LocalOptions(timeout_s=120, **options)) as rt:
        yield rt


def write(tmp_path: Path, lines: list[dict[str, Any]]) -> Path:
    path = tmp_path / "jobs.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def billed(rt: LocalRuntime, model: Model) -> Decimal:
    """What the simulator billed, from its own counts (all of one model)."""
    assert rt.simulator is not None
    stats = rt.simulator.stats()
    usage = Usage(
        prompt_tokens=stats.prompt_tokens,
        cached_tokens=stats.cached_tokens,
        completion_tokens=stats.completion_tokens,
    )
    return cost(usage, model)


def spent(rt: LocalRuntime) -> Decimal:
    usage = Budget(boto3.client("dynamodb"), rt.resources.table, rt.config).usage()
    assert usage.reserved_usd == 0, "every reservation settled or released"
    return usage.spent_usd


@pytest.mark.usefixtures("quick_deferrals")
def test_open_ended_jobs_never_bill_past_a_tiny_budget(tmp_path: Path, config: Config):
    """The issue's run: open-ended jobs, $0.01 budget, a provider answering at length."""
    lines = [{"custom_id": f"o{i}", "prompt": f"tell me all about topic {i}"} for i in range(40)]
    with runtime(tmp_path, budget_usd=Decimal("0.01"), simulator=GREEDY) as rt:
        summary = rt.run(write(tmp_path, lines), tmp_path / "out")
        assert summary.succeeded >= 2 and summary.deferred > 0 and summary.failed == 0
        assert summary.succeeded + summary.deferred == 40
        provider_billed = billed(rt, rt.config.models["deepseek-chat"])
        assert provider_billed <= Decimal("0.01")
        assert rt.simulator is not None
        assert rt.simulator.stats().completion_tokens == summary.succeeded * 4096  # the cap sent
        assert spent(rt) == provider_billed  # booked = billed: every answer carried usage


def test_n5_with_a_20kb_tool_reserves_at_least_what_is_billed(tmp_path: Path, config: Config):
    tool = big_tool(20_000)
    lines = [
        {
            "custom_id": f"t{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": "gpt-4.1",
                "messages": [{"role": "user", "content": f"find record {i}"}],
                "n": 5,
                "tools": [tool],
            },
        }
        for i in range(3)
    ]
    with runtime(tmp_path, simulator=GREEDY, tpm=1_000_000) as rt:
        summary = rt.run(write(tmp_path, lines), tmp_path / "out")
        assert summary.succeeded == 3
        model = rt.config.models["gpt-4.1"]
        provider_billed = billed(rt, model)
        assert rt.simulator is not None
        assert rt.simulator.stats().completion_tokens == 3 * 5 * 4096  # every choice billed
        dynamo = boto3.client("dynamodb")
        reserved = Decimal(0)
        for line in lines:
            key = reservation_key(f"local#{line['custom_id']}")
            item = dynamo.get_item(TableName=rt.resources.table, Key=key)["Item"]
            assert int(item["nanos"]["N"]) >= int(item["actual"]["N"])
            reserved += from_nanos(int(item["nanos"]["N"]))
        assert reserved >= provider_billed
        assert spent(rt) == provider_billed
        results = read_jsonl(tmp_path / "out" / "results.jsonl")
        assert all(len(r["response"]["body"]["choices"]) == 5 for r in results)


def test_a_model_that_takes_max_completion_tokens_never_gets_max_tokens(
    tmp_path: Path, config: Config
):
    """OpenAI's reasoning models refuse max_tokens (400): such a model is configured with
    ``reasoning = true``; every job reaches it capped with max_completion_tokens, and a job
    that gives max_tokens is refused at submit (never rewritten)."""
    reasoning = config.models["gpt-4.1"].model_copy(
        update={"model_id": "o4-mini", "reasoning": True}
    )
    config = config.model_copy(update={"models": config.models | {"o4-mini": reasoning}})
    user = [{"role": "user", "content": "prove it"}]
    caps: list[dict[str, Any]] = [
        {"max_tokens": 50},
        {"max_completion_tokens": 60},
        {},
        {"stream": True},
    ]
    lines = [
        {
            "custom_id": f"r{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "o4-mini", "messages": user} | cap,
        }
        for i, cap in enumerate(caps)
    ]
    settings = GREEDY.model_copy(update={"models": ["o4-mini"], "answer_tokens": 5000})
    with runtime(tmp_path, config, simulator=settings) as rt:
        summary = rt.run(write(tmp_path, lines), tmp_path / "out")
        assert summary.succeeded == 3 and summary.invalid_lines == summary.failed == 1
        assert rt.simulator is not None
        assert rt.simulator.stats().by_status == {"200": 3}
        answers = {
            r["custom_id"]: r["response"]["body"]["choices"][0]["message"]["content"]
            for r in read_jsonl(tmp_path / "out" / "results.jsonl")
        }
        assert "r0" not in answers  # max_tokens: refused at submit
        for line, cap in zip(lines[1:], [60, 4096, 4096], strict=True):
            assert answers[line["custom_id"]] == answer_for(user, cap, 5000)[0]
