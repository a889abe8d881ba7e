"""Books exact, end to end through the local runtime: a dead letter counted once with its
real last error, response-cache hits in their own counters (never in the billed tokens),
reasoning tokens a gateway reports outside ``completion_tokens`` booked as billed output.

The worker's metric tallies are read where the handler hands them to EMF
(``worker/handler.py`` ``emit_metrics``): every invocation's ``Invocation.tallies``.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import pytest
from rich.console import Console

from bench._common import read_jsonl, runtime, write_config
from chatbatch.cli.status import _batch_table, batch_status
from chatbatch.core.config import Config
from chatbatch.core.job_lines import parse_line
from chatbatch.core.metrics import Metric
from chatbatch.core.pricing import Usage, cost
from chatbatch.local.options import LocalOptions
from chatbatch.local.runtime import LocalRuntime
from chatbatch.local.simulator import (
    FaultKind,
    Reasoning,
    ReasoningUsage,
    SimulatorSettings,
    answer_for,
)
from chatbatch.local.summary import Summary
from chatbatch.state.budget.budget import Budget
from chatbatch.state.budget.ledger import DayUsage
from chatbatch.state.limiter.limiter import RateLimiter
from chatbatch.worker import handler, pipeline
from chatbatch.worker.intake import Intake
from chatbatch.worker.invocation import Invocation, Outcome


def write(tmp_path: Path, lines: list[dict[str, Any]], name: str) -> Path:
    path = tmp_path / name
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def ledger(rt: LocalRuntime) -> DayUsage:
    return Budget(boto3.client("dynamodb"), rt.resources.table, rt.config).usage()


@pytest.fixture
def tallies(monkeypatch: pytest.MonkeyPatch) -> Counter[Metric]:
    """Every metric the workers hand to EMF, added up over all invocations."""
    seen: Counter[Metric] = Counter()
    lock = threading.Lock()
    emit = handler.emit_metrics

    def capture(inv: Invocation) -> None:
        with lock:
            for (metric, _model, _priority), value in inv.tallies.items():
                seen[metric] += value
        emit(inv)

    monkeypatch.setattr(handler, "emit_metrics", capture)
    return seen


def test_a_dead_letter_is_counted_once_and_keeps_its_last_error(
    tmp_path: Path, config: Config, tallies: Counter[Metric], monkeypatch: pytest.MonkeyPatch
):
    """Provider 503s on every delivery, and a job whose every delivery raises: each is
    dead-lettered once (metric, batch counter) with the error that ended its last delivery."""
    before_budget = pipeline._before_budget

    async def on_fire(inv: Invocation, intake: Intake) -> Outcome | None:
        if intake.custom_id == "fire":
            raise OSError("disk on fire")
        return await before_budget(inv, intake)

    monkeypatch.setattr(pipeline, "_before_budget", on_fire)
    jobs = [{"custom_id": c, "prompt": f"x {c}", "priority": "high"} for c in ("p0", "p1", "fire")]
    path = write(tmp_path, jobs, "jobs.jsonl")
    sim = SimulatorSettings(fault_rates={FaultKind("503"): 1.0})
    cfg = write_config(
        tmp_path / "chatbatch.json",
        config,
        worker={"max_receive_count": 2},
        retries={"max_attempts": 1, "base_s": 0.1, "max_backoff_s": 0.5},
    )
    # an unexpected error leaves the message invisible for the visibility timeout: 2 s here
    options = LocalOptions(config_path=cfg, simulator=sim, timeout_s=60, visibility_timeout_s=2)
    with runtime(options) as rt:
        summary = rt.run(path, tmp_path / "out")
        # nothing spent ("fire"'s reservation, taken ahead for the invocation, is left to
        # the reclaim, as after any crash)
        assert ledger(rt).spent_usd == 0
    assert (summary.dead_lettered, summary.succeeded, summary.failed) == (3, 0, 0)
    assert tallies[Metric.JOBS_DEAD_LETTERED] == 3
    assert tallies[Metric.JOBS_FAILED] == 0
    errors = {e["custom_id"]: e["error"] for e in read_jsonl(tmp_path / "out" / "errors.jsonl")}
    provider = (
        "gave up after 2 deliveries: HTTP 503, transient, after 1 attempt: out of attempts: "
        "The engine is currently overloaded."
    )
    assert errors == {
        "p0": {"code": "dead_lettered", "message": provider},
        "p1": {"code": "dead_lettered", "message": provider},
        "fire": {
            "code": "dead_lettered",
            "message": "gave up after 2 deliveries: OSError: disk on fire",
        },
    }


def run_batch(rt: LocalRuntime, path: Path, batch_id: str, out: Path) -> Summary:
    started = time.monotonic()
    plan = rt.submit(path, batch_id)
    info = rt.wait(plan)
    return rt.write_outputs(path, plan, info, out, time.monotonic() - started)


def billed_tokens(costs: list[dict[str, Any]]) -> tuple[int, int]:
    paid = [c for c in costs if not c["cached"]]
    return sum(c["prompt_tokens"] for c in paid), sum(c["completion_tokens"] for c in paid)


def test_cache_hits_have_their_own_counters_and_bill_no_tokens(
    tmp_path: Path, tallies: Counter[Metric]
):
    question = {"prompt": "the same question", "cache": True, "max_tokens": 40}
    with runtime(LocalOptions()) as rt:
        assert rt.simulator is not None
        first = run_batch(
            rt, write(tmp_path, [{"custom_id": "c0", **question}], "a.jsonl"), "a", tmp_path / "a"
        )
        before = rt.simulator.stats()
        lines = [{"custom_id": f"c{i}", **question} for i in range(1, 4)]
        lines.append({"custom_id": "fresh", "prompt": "something else", "max_tokens": 30})
        second = run_batch(rt, write(tmp_path, lines, "b.jsonl"), "b", tmp_path / "b")
        after = rt.simulator.stats()
        info = rt.batches.get("b")
    (stored,) = read_jsonl(tmp_path / "a" / "costs.jsonl")
    stored_tokens = stored["prompt_tokens"] + stored["completion_tokens"]
    assert (first.cached_jobs, first.cache_saved_tokens) == (0, 0)
    assert (second.succeeded, second.cached_jobs) == (4, 3)
    assert second.cache_saved_tokens == 3 * stored_tokens
    # the billed totals are what the provider billed: the one fresh job
    assert after.requests - before.requests == 1
    billed = (
        after.prompt_tokens - before.prompt_tokens,
        after.completion_tokens - before.completion_tokens,
    )
    assert (second.prompt_tokens, second.completion_tokens) == billed
    assert billed_tokens(read_jsonl(tmp_path / "b" / "costs.jsonl")) == billed
    summary_file = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert (summary_file["cached_jobs"], summary_file["prompt_tokens"]) == (3, billed[0])
    # the metrics: three hits, and only billed tokens under PromptTokens / CompletionTokens
    assert tallies[Metric.CACHE_HITS] == 3
    assert tallies[Metric.PROMPT_TOKENS] == first.prompt_tokens + second.prompt_tokens
    assert tallies[Metric.COMPLETION_TOKENS] == first.completion_tokens + second.completion_tokens
    # chatbatch status shows them
    assert info is not None
    status = batch_status(info, 0, time.time())
    assert (status.cached_jobs, status.cache_saved_tokens) == (3, 3 * stored_tokens)
    assert (status.prompt_tokens, status.completion_tokens) == billed
    console = Console(width=100, record=True)
    console.print(_batch_table(status))
    assert f"3 ({3 * stored_tokens} tokens saved)" in console.export_text()


def test_reasoning_reported_outside_completion_tokens_is_booked_as_billed(tmp_path: Path):
    """deepseek-chat's gateway reports its reasoning outside ``completion_tokens`` (only in
    ``total_tokens``); gpt-4.1's inside (the norm). Booked == billed for both."""
    think = {
        "deepseek-chat": Reasoning(tokens=40, usage=ReasoningUsage.outside),
        "gpt-4.1": Reasoning(tokens=25, usage=ReasoningUsage.inside),
    }
    lines: list[dict[str, Any]] = []
    for i in range(6):
        model = "deepseek-chat" if i % 2 else "gpt-4.1"
        lines.append(
            {
                "custom_id": f"r{i}",
                "model": model,
                "prompt": f"think about {i}",
                "max_tokens": 100,
                "stream": i % 3 == 0,
            }
        )
    path = write(tmp_path, lines, "jobs.jsonl")
    with runtime(LocalOptions(simulator=SimulatorSettings(reasoning=think))) as rt:
        summary = rt.run(path, tmp_path / "out")
        stats = rt.simulator.stats() if rt.simulator else None
        booked = ledger(rt)
        config = rt.config
    assert stats is not None and summary.succeeded == 6 and stats.completions == 6
    costs = {c["custom_id"]: c for c in read_jsonl(tmp_path / "out" / "costs.jsonl")}
    results = {r["custom_id"]: r for r in read_jsonl(tmp_path / "out" / "results.jsonl")}
    billed_usd = Decimal(0)
    for n, line in enumerate(lines, 1):
        job = parse_line(json.dumps(line), config, line=n)
        model = config.models[job.model]
        reasoning = think[job.model].tokens
        messages = job.request_body(model)["messages"]
        _, visible, _ = answer_for(messages, 100 - reasoning)  # the simulator's own answer
        usage = Usage.from_api(results[job.custom_id]["response"]["body"]["usage"])
        record = costs[job.custom_id]
        assert record["completion_tokens"] == visible + reasoning, job.custom_id
        assert record["reasoning_tokens"] == reasoning
        paid = Usage(
            prompt_tokens=usage.prompt_tokens,
            cached_tokens=usage.cached_tokens,
            completion_tokens=visible + reasoning,
        )
        billed_usd += cost(paid, model)
        assert Decimal(record["cost_usd"]) == cost(paid, model), job.custom_id
    assert summary.completion_tokens == stats.completion_tokens  # reasoning included
    assert summary.prompt_tokens == stats.prompt_tokens
    assert booked.reserved_usd == 0 and booked.spent_usd == billed_usd


def _priced(usage: dict[str, int], model: Any) -> Decimal:
    """The simulator's bill for one model at the price table (the test's own arithmetic)."""
    uncached = usage["prompt_tokens"] - usage["cached_tokens"]
    return (
        uncached * model.input_per_m
        + usage["cached_tokens"] * model.cached_input_per_m
        + usage["completion_tokens"] * model.output_per_m
    ) / 1_000_000


def test_every_call_the_provider_may_have_billed_is_booked(
    tmp_path: Path, tallies: Counter[Metric]
):
    """Answers cut, corrupt, reset after generation or sent without usage, open-ended jobs
    (no max_tokens) and n = 3: every call the simulator billed is booked, exactly when its
    usage came and at the job's worst case when it did not, in the ledger, the batch's
    counters, one cost record per call, summary.json and ``chatbatch costs``; no call is
    sent on money already spent."""
    jobs = [
        {"custom_id": "plain", "prompt": "cut me", "max_tokens": 30},
        {"custom_id": "stream", "prompt": "cut my stream", "max_tokens": 30, "stream": True},
        {"custom_id": "more", "prompt": "reset after", "max_tokens": 30},
        {"custom_id": "again", "prompt": "no usage", "max_tokens": 30, "stream": True},
        {"custom_id": "open", "prompt": "tell me everything"},  # no cap of its own
        {
            "custom_id": "three",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": "deepseek-chat",
                "messages": [{"role": "user", "content": "three ways"}],
                "max_tokens": 20,
                "n": 3,
            },
        },
    ]
    path = write(tmp_path, jobs, "jobs.jsonl")
    with runtime(LocalOptions()) as rt:
        assert rt.simulator is not None
        # the first four calls, whichever jobs make them
        rt.simulator.inject("truncate", "corrupt", "reset_after", "no_usage")
        summary = run_batch(rt, path, "books", tmp_path / "out")
        stats = rt.simulator.stats()
        spent = ledger(rt).spent_usd
        info = rt.batches.get("books")
        models = {m.model_id: m for m in rt.config.models.values()}
        billed = sum(_priced(u.model_dump(), models[m]) for m, u in stats.billed_by_model.items())
        from chatbatch.client.costs import load_report

        report = load_report(
            boto3.client("s3"), rt.resources.bucket, batch="books", batches=rt.batches
        )
        limiter = RateLimiter(boto3.client("dynamodb"), rt.resources.table, rt.config)
        took = sum(limiter.status(name).used_requests for name in rt.config.models)
    assert summary.succeeded == len(jobs) and summary.failed == 0
    # each call took its request from the rate limit: the first, and the one re-bought
    # after each answer never read (the run is shorter than the limit's minute)
    assert took == stats.requests == len(jobs) + 3
    costs = read_jsonl(tmp_path / "out" / "costs.jsonl")
    unread = [c for c in costs if c["attempt"] is not None]
    estimated = [c for c in costs if c["usage_estimated"]]
    # three calls were billed and never read, one answer came without usage
    assert stats.billed_unread == 3 and len(unread) == 3
    assert summary.estimated_calls == len(estimated) == 4
    assert info is not None and info.estimated_calls == 4
    assert tallies[Metric.ESTIMATED_CALLS] == 4
    results = {r["custom_id"]: r for r in read_jsonl(tmp_path / "out" / "results.jsonl")}
    # the answer without usage is the job's result, at its worst case; the others' second
    # calls came with usage
    no_usage = [r for r in results.values() if r["chatbatch"]["usage_estimated"]]
    assert len(no_usage) == 1 and no_usage[0]["response"]["body"].get("usage") is None
    assert [c["custom_id"] for c in estimated if c["attempt"] is None] == [no_usage[0]["custom_id"]]
    # its line says the usage booked, as its cost record has it (an Anthropic result reports it)
    booked = no_usage[0]["chatbatch"]["booked_usage"]
    record = next(c for c in estimated if c["attempt"] is None)
    assert (booked["prompt_tokens"], booked["completion_tokens"]) == (
        record["prompt_tokens"],
        record["completion_tokens"],
    )
    assert booked["completion_tokens"] > 0
    # booked >= billed; every record adds up to the ledger, the summary and costs
    from_records = sum(Decimal(c["cost_usd"]) for c in costs)
    assert spent == from_records == report.total.cost_usd
    assert Decimal(str(summary.cost_usd)) == from_records
    assert report.total.estimated_calls == 4 and report.total.jobs == len(jobs)
    assert spent >= billed > 0
    # where usage came, booked = billed: the calls booked at a worst case are the only gap
    exact = from_records - sum(Decimal(c["cost_usd"]) for c in estimated)
    assert exact < billed  # the unread calls were billed too, only their price is unknown
    assert stats.billed_calls == len(jobs) + 3, "one more call per unread answer, no more"
