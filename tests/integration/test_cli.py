"""The `chatbatch` CLI against the local runtime, found the way a deployment is found.

One `LocalRuntime` (moto's HTTP server on loopback, the simulator, the emulated Lambda)
serves the module. It registers its CloudFormation stack in moto exactly as
`chatbatch local up` does, and every command below discovers the queues, table and
bucket from that stack's outputs. Workers run one job per invocation, two per priority,
so a slow simulator makes a batch last long enough to watch it move and to cancel it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import boto3
import pytest
from anthropic.types.messages import MessageBatchIndividualResponse
from typer.testing import CliRunner, Result

from chatbatch.cli.app import app
from chatbatch.core.config import Config, Priority
from chatbatch.core.job_lines import parse_line
from chatbatch.core.output_lines import CostRecord
from chatbatch.core.pricing import Usage, cost, to_nanos
from chatbatch.core.principals import caller_principal
from chatbatch.local.options import LocalOptions
from chatbatch.local.runtime import LocalRuntime
from chatbatch.local.simulator import FaultKind, SimulatorSettings, answer_for
from chatbatch.state.batches import SubmittedFromAnotherFile
from chatbatch.state.budget.budget import HELD_RETRY_S
from chatbatch.state.store import cost_key

pytestmark = pytest.mark.slow
runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]
CENT = Decimal("0.01")


@dataclass
class Local:
    rt: LocalRuntime
    config_file: Path
    workdir: Path

    def cli(self, *args: str, code: int | None = 0) -> Result:
        """``chatbatch ARGS --config FILE``; checks the exit code unless ``code`` is None."""
        result = runner.invoke(app, [*args, "--config", str(self.config_file)])
        if code is not None:
            assert result.exit_code == code, (result.stdout, result.stderr, result.exception)
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "--json").stdout)

    def status(self, batch: str) -> dict[str, Any]:
        data: dict[str, Any] = self.json("status", batch)
        return data

    def wait(self, batch: str, done: Callable[[dict[str, Any]], bool], timeout: float = 30) -> Any:
        deadline = time.monotonic() + timeout
        while not done(status := self.status(batch)):
            assert time.monotonic() < deadline, f"timed out: {status}"
            time.sleep(0.1)
        return status

    def write(self, name: str, lines: list[str]) -> Path:
        path = self.workdir / name
        path.write_text("\n".join(lines) + "\n")
        return path

    def requests(self) -> int:
        assert self.rt.simulator is not None
        return self.rt.simulator.stats().requests

    def configure(self, **settings: Any) -> None:
        assert self.rt.simulator is not None
        self.rt.simulator.configure(**settings)


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory, config: Config) -> Iterator[Local]:
    workdir = tmp_path_factory.mktemp("cli")
    quick = config.model_copy(
        update={
            "worker": config.worker.model_copy(
                update={"max_receive_count": 2, "batch_size": 1, "batch_window_s": 0}
            ),
            "retries": config.retries.model_copy(
                update={"max_attempts": 1, "base_s": 0.1, "max_backoff_s": 0.5}
            ),
        }
    )
    config_file = workdir / "chatbatch.json"
    config_file.write_text(quick.model_dump_json())
    options = LocalOptions(
        config_path=config_file,
        server=True,
        concurrency=2,
        visibility_timeout_s=3,
        simulator=SimulatorSettings(latency_ms=150),
    )
    with LocalRuntime(options) as rt:
        rt.register_stack()  # what `chatbatch local up` does
        yield Local(rt, config_file, workdir)


def job_lines(n: int, prefix: str, **extra: Any) -> list[str]:
    priorities = ["critical", "high", "normal", "low"]
    lines = []
    for i in range(n):
        if i % 3 == 0:
            line: dict[str, Any] = {
                "custom_id": f"{prefix}{i:03d}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": "gpt-4.1",
                    "max_tokens": 40,
                    "messages": [{"role": "user", "content": f"explain {prefix} {i}"}],
                },
            }
        else:
            line = {"custom_id": f"{prefix}{i:03d}", "prompt": f"label {prefix} {i}"}
        line.setdefault("priority", priorities[i % 4])
        lines.append(json.dumps(line | extra))
    return lines


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def queued_anywhere(local: Local, settle_s: float = HELD_RETRY_S + 15) -> int:
    """Messages left in the queues (visible, in flight, delayed). A job's result is stored
    before its invocation returns and the emulated mapping deletes the message, so a
    message may still be in flight for a moment after the batch counts it done; and on a
    busy machine an invocation can outlast the 3 s visibility timeout, so a second copy of
    the job is delivered, finds the first at work and comes back ``HELD_RETRY_S`` later
    (as a duplicate): wait up to ``settle_s`` for them to go."""
    deadline = time.monotonic() + settle_s
    while True:
        overview = local.json("status")
        left = sum(q["queued"] + q["in_flight"] + q["delayed"] for q in overview["queues"])
        if left == 0 or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


@dataclass
class Finished:
    batch_id: str
    lines: list[str]
    submitted: dict[str, Any]
    history: list[dict[str, Any]]
    results: Path
    collected: dict[str, Any]


@pytest.fixture(scope="module")
def finished(local: Local) -> Finished:
    """48 jobs: submit, watch the counts until done, collect."""
    lines = job_lines(48, "a")
    path = local.write("jobs.jsonl", lines)
    submitted = local.json("submit", str(path))
    batch = submitted["batch_id"]
    history = [local.status(batch)]
    while not history[-1]["done"]:
        time.sleep(0.05)
        history.append(local.status(batch))
    results = local.workdir / "results.jsonl"
    collected = local.json("collect", batch, "-o", str(results))
    return Finished(batch, lines, submitted, history, results, collected)


def test_submit_registers_sends_and_status_counts_move(local: Local, finished: Finished) -> None:
    submitted = finished.submitted
    assert submitted["status"] == "sent" and submitted["sent"] == submitted["valid"] == 48
    assert finished.batch_id.startswith("b-") and submitted["invalid"] == 0
    assert submitted["by_priority"] == {"critical": 12, "high": 12, "low": 12, "normal": 12}
    assert submitted["by_model"] == {"deepseek-chat": 32, "gpt-4.1": 16}
    assert Decimal(submitted["worst_case_usd"]) > 0 and submitted["estimate_s"] > 0
    finished_counts = [s["succeeded"] for s in finished.history]
    assert finished_counts == sorted(finished_counts), "counts only move forward"
    assert len(set(finished_counts)) >= 3, f"status saw the batch move: {finished_counts}"
    assert finished.history[0]["pending"] > 0
    last = finished.history[-1]
    assert (last["total"], last["succeeded"], last["pending"], last["failed"]) == (48, 48, 0, 0)
    assert last["jobs_per_s"] > 0 and Decimal(last["cost_usd"]) > 0
    # the same submit again: recognised by its checksum, nothing sent, nothing called
    calls = local.requests()
    again = local.json("submit", str(local.workdir / "jobs.jsonl"))
    assert again["status"] == "already_submitted" and again["sent"] == 0
    assert queued_anywhere(local) == 0 and local.requests() == calls
    watched = local.cli("status", finished.batch_id, "--watch", "--json").stdout.splitlines()
    assert len(watched) == 1 and json.loads(watched[0])["done"]  # a finished batch: one refresh
    overview = local.json("status")
    assert [q["priority"] for q in overview["queues"]] == [
        "critical",
        "high",
        "normal",
        "low",
        "batch",
    ]
    assert Decimal(overview["budget"]["spent_usd"]) >= Decimal(last["cost_usd"])


def test_collect_returns_every_job_in_input_order_in_batch_format(
    local: Local, finished: Finished
) -> None:
    errors_file = finished.results.with_name("results.errors.jsonl")  # OpenAI's two files
    assert finished.collected == {
        "batch_id": finished.batch_id,
        "output": str(finished.results),
        "errors_file": str(errors_file),
        "source": "manifest",
        "results": 48,
        "errors": 0,
        "unfinished": 0,
    }
    assert errors_file.read_text() == ""
    # -e names the error file; with -o -, the errors stay on stdout with the results
    chosen = finished.results.with_name("chosen-errors.jsonl")
    again = local.json("collect", finished.batch_id, "-o", str(finished.results), "-e", str(chosen))
    assert (again["errors_file"], again["results"], chosen.read_text()) == (str(chosen), 48, "")
    piped = local.cli("collect", finished.batch_id, "-o", "-").stdout.splitlines()
    assert [json.loads(line)["custom_id"] for line in piped] == [
        r["custom_id"] for r in read_jsonl(finished.results)
    ]
    results = read_jsonl(finished.results)
    jobs = [parse_line(text, local.rt.config, line=n) for n, text in enumerate(finished.lines, 1)]
    assert [r["custom_id"] for r in results] == [j.custom_id for j in jobs]
    for job, line in zip(jobs, results, strict=True):
        assert set(line) == {"id", "custom_id", "response", "error", "chatbatch"}
        assert line["id"].startswith("batch_req_") and line["error"] is None
        assert line["response"]["status_code"] == 200
        body = line["response"]["body"]
        assert body["object"] == "chat.completion" and body["usage"]["total_tokens"] > 0
        sent = job.request_body(local.rt.config.models[job.model])
        expected = answer_for(sent["messages"], sent.get("max_tokens"))[0]
        assert body["choices"][0]["message"]["content"] == expected
        assert line["chatbatch"]["batch_id"] == finished.batch_id


def test_costs_totals_equal_the_results_costs_to_the_cent(local: Local, finished: Finished) -> None:
    report = local.json("costs", "--batch", finished.batch_id, "--by", "priority")
    costs = [r["chatbatch"]["cost_usd"] for r in read_jsonl(finished.results)]
    assert all(isinstance(usd, str) for usd in costs), "money as exact decimal strings"
    from_results = sum(Decimal(usd) for usd in costs)
    total = Decimal(report["total_usd"])
    assert report["jobs"] == 48 and report["days"] == 1
    assert total.quantize(CENT, ROUND_HALF_UP) == from_results.quantize(CENT, ROUND_HALF_UP)
    assert abs(total - from_results) < Decimal("1e-9")
    info = local.rt.batches.get(finished.batch_id)
    assert info is not None and to_nanos(total) == info.cost_nanos
    assert [g["key"] for g in report["groups"]] == [["critical"], ["high"], ["low"], ["normal"]]
    assert [g["name"] for g in report["groups"]] == ["critical", "high", "low", "normal"]
    assert sum(Decimal(g["cost_usd"]) for g in report["groups"]) == total
    human = local.cli("costs", "--batch", finished.batch_id)
    assert "deepseek-chat" in human.stdout and "gpt-4.1" in human.stdout


def put_record(
    local: Local, day: str, custom_id: str, model: str, usage: Usage, *, cached: bool
) -> None:
    price = local.rt.config.models[model]
    usd = Decimal(0) if cached else cost(usage, price)
    record = CostRecord(
        ts=f"{day}T12:00:00Z",
        dt=day,
        batch_id="handmade",
        custom_id=custom_id,
        priority="normal",
        model=model,
        model_id=price.model_id,
        provider=price.provider,
        prompt_tokens=usage.prompt_tokens,
        cached_tokens=usage.cached_tokens,
        completion_tokens=usage.completion_tokens,
        reasoning_tokens=0,
        cost_nanos=to_nanos(usd),
        cost_usd=usd,
        cached=cached,
    )
    boto3.client("s3").put_object(
        Bucket=local.rt.resources.bucket,
        Key=cost_key(day, "handmade", custom_id),
        Body=record.model_dump_json().encode(),
    )


def test_compare_reprices_the_usage_by_hand_and_charts_it(local: Local) -> None:
    put_record(
        local,
        "2025-01-01",
        "d1",
        "deepseek-chat",
        Usage(prompt_tokens=1_000_000, cached_tokens=200_000, completion_tokens=500_000),
        cached=False,
    )
    put_record(
        local,
        "2025-01-02",
        "g1",
        "gpt-4.1",
        Usage(prompt_tokens=100_000, completion_tokens=50_000),
        cached=False,
    )
    # a cache hit costs nothing on any model: left out of the comparison
    put_record(
        local,
        "2025-01-02",
        "c1",
        "gpt-4.1",
        Usage(prompt_tokens=7_000, completion_tokens=7_000),
        cached=True,
    )
    chart = local.workdir / "costs.png"
    report = local.json(
        "costs",
        "--batch",
        "handmade",
        "--since",
        "2025-01-01",
        "--by",
        "day",
        "--compare",
        "--chart",
        str(chart),
    )
    # deepseek 0.8M x 0.28 + 0.2M x 0.028 + 0.5M x 0.42 = 0.4396; gpt-4.1 0.1M x 2 + 0.05M x 8 = 0.6
    assert Decimal(report["total_usd"]) == Decimal("1.0396")
    assert {g["name"]: Decimal(g["cost_usd"]) for g in report["groups"]} == {
        "2025-01-01": Decimal("0.4396"),
        "2025-01-02": Decimal("0.6"),
    }
    assert report["days"] == 2 and report["jobs"] == 3
    assert Decimal(report["annual_usd"]) == Decimal("1.0396") / 2 * 365
    # billed usage: 1.1M prompt (0.2M cached, so 0.9M uncached), 0.55M completion
    by_hand = {
        "deepseek-chat": Decimal("0.252") + Decimal("0.0056") + Decimal("0.231"),  # 0.4886
        "gemini-2.5-flash": Decimal("0.27") + Decimal("0.006") + Decimal("1.375"),  # 1.651
        "gpt-4.1": Decimal("1.8") + Decimal("0.1") + Decimal("4.4"),  # 6.3
        "claude-sonnet-4.5": Decimal("2.7") + Decimal("0.06") + Decimal("8.25"),  # 11.01
    }
    rows = {row["model"]: row for row in report["compare"]}
    assert [row["model"] for row in report["compare"]] == list(by_hand), "cheapest first"
    for model, usd in by_hand.items():
        assert Decimal(rows[model]["cost_usd"]) == usd, model
        assert Decimal(rows[model]["annual_usd"]) == usd * Decimal("182.5"), model
    assert Decimal(rows["gpt-4.1"]["ratio"]) == Decimal("6.3") / Decimal("1.0396")
    png = chart.read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1024
    human = local.cli("costs", "--batch", "handmade", "--since", "2025-01-01", "--compare")
    assert "$6.3000" in human.stdout and "$1,149.7500" in human.stdout  # gpt-4.1 x 182.5


def test_cancel_mid_batch_leaves_no_provider_call_for_cancelled_jobs(local: Local) -> None:
    local.configure(latency_ms=400)
    try:
        path = local.write("slow.jsonl", job_lines(30, "s", priority="normal"))
        batch = local.json("submit", str(path))["batch_id"]
        calls_before = local.requests()
        local.wait(batch, lambda s: s["succeeded"] >= 2)
        cancelled = local.json("cancel", batch)
        assert cancelled["batch_id"] == batch and cancelled["pending"] > 0
        final = local.wait(batch, lambda s: s["done"])
    finally:
        local.configure(latency_ms=0)
    assert final["batch_cancelled"] and final["cancelled"] > 0 and final["failed"] == 0
    assert final["succeeded"] + final["cancelled"] == 30
    assert local.requests() - calls_before == final["succeeded"], "no call for a cancelled job"
    info = local.rt.batches.get(batch)
    assert info is not None and info.provider_calls == final["succeeded"]
    errors = local.workdir / "cancelled.jsonl"
    collected = local.json(
        "collect", batch, "-o", str(local.workdir / "kept.jsonl"), "--errors", str(errors)
    )
    assert (collected["results"], collected["errors"]) == (final["succeeded"], final["cancelled"])
    assert {e["error"]["code"] for e in read_jsonl(errors)} == {"batch_cancelled"}


def dead_letters(local: Local, priority: str) -> int:
    overview = local.json("status")
    return next(q["dead_letters"] for q in overview["queues"] if q["priority"] == priority)


def submit_dead_letters(local: Local, n: int, prefix: str, priority: str) -> str:
    """A batch of ``n`` jobs that fail on every delivery (503) until they are dead-lettered
    and their messages are in the DLQ."""
    # (a CI run once found 4 messages for 3 jobs: one left by an earlier test, or a copy?)
    assert dead_letters(local, priority) == 0, "the DLQ holds a message of an earlier test"
    local.configure(latency_ms=0, fault_rates={FaultKind("503"): 1.0})
    try:
        path = local.write(f"{prefix}.jsonl", job_lines(n, prefix, priority=priority))
        # (synchronous: a low job on gpt-4.1 would otherwise take the batch route)
        batch: str = local.json("submit", str(path), "--route", "sync")["batch_id"]
        local.wait(batch, lambda s: s["dead_lettered"] == n)
        deadline = time.monotonic() + 20
        while dead_letters(local, priority) < n:  # SQS moves a message at its next receive
            assert time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        local.configure(fault_rates={})
    return batch


def test_redrive_empties_the_dlq_and_the_jobs_then_finish(local: Local) -> None:
    batch = submit_dead_letters(local, 3, "p", "high")
    moved = local.json("redrive", "--priority", "high")
    assert moved == {"moved": {"high": 3}, "total": 3}
    assert dead_letters(local, "high") == 0
    final = local.wait(batch, lambda s: s["succeeded"] == 3)
    assert final["dead_lettered"] == 0 and final["done"]
    assert local.json("redrive")["total"] == 0


def run_cli(local: Local, *args: str) -> subprocess.Popen[str]:
    """``chatbatch ARGS`` in its own process, finding the local runtime by its stack."""
    chatbatch = Path(sys.executable).parent / "chatbatch"
    command = [str(chatbatch), *args, "--config", str(local.config_file)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def s3_json(local: Local, key: str) -> Any:
    body = boto3.client("s3").get_object(Bucket=local.rt.resources.bucket, Key=key)["Body"]
    return json.loads(body.read())


RETRY_IDS = ["g0", "d0", "g1", "g2", "huge"]


def submit_failing(local: Local) -> str:
    """Three jobs the provider refuses (400: it takes no max_tokens for gpt-4.1), one that
    succeeds, one over the request cap; the plan of a dry-run retry, which sends nothing."""
    lines = [
        json.dumps({"custom_id": i, "model": "gpt-4.1", "max_tokens": 20, "prompt": f"{i}?"})
        for i in ("g0", "g1", "g2")
    ]
    lines.insert(1, json.dumps({"custom_id": "d0", "prompt": "fine"}))
    huge = {"custom_id": "huge", "model": "claude-sonnet-4.5", "max_tokens": 64000}
    lines.append(json.dumps(huge | {"prompt": "word " * 4000}))  # worst case $1.01 > $1 cap
    path = local.write("retry.jsonl", lines)
    batch = local.json("submit", str(path), "--batch-id", "retry-e2e")["batch_id"]
    first = local.wait(batch, lambda s: s["done"])
    assert (first["succeeded"], first["failed"]) == (1, 4)
    errors, answers = local.workdir / "retry-errors.jsonl", local.workdir / "ok.jsonl"
    local.cli("collect", batch, "-o", str(answers), "--errors", str(errors))
    # the provider's 400s are answers, in the output file as OpenAI writes them: the body
    # as the provider sent it (type, param, code kept); the job keeps code provider_400
    refused = {
        r["custom_id"]: r for r in read_jsonl(answers) if r["response"]["status_code"] != 200
    }
    assert sorted(refused) == ["g0", "g1", "g2"]
    for line in refused.values():
        assert line["error"] is None and line["response"]["status_code"] == 400
        error = line["response"]["body"]["error"]
        assert (error["type"], error["param"], error["code"]) == (
            "invalid_request_error",
            "max_tokens",
            "unsupported_parameter",
        )
    codes = {e["custom_id"]: e["error"]["code"] for e in read_jsonl(errors)}
    assert codes == {"huge": "over_request_cap"}  # never sent: no HTTP answer
    calls = local.requests()
    assert local.json("retry", batch, "--dry-run") == {
        "batch_id": batch,
        "status": "dry_run",
        "codes": [],
        "selected": 4,
        "by_code": {"over_request_cap": 1, "provider_400": 3},
        "sent": 0,
        "skipped": 0,
        "other_codes": {},
        "retrying": 0,
        "not_retriable": 0,
    }
    human = local.cli("retry", batch, "--dry-run").stdout
    assert "dry run: 4 job(s) of batch retry-e2e would be sent again; nothing sent" in human
    assert "│ provider_400                   │    3 │" in human
    assert local.status(batch)["failed"] == 4 and queued_anywhere(local) == 0
    assert local.requests() == calls
    return batch


def test_retry_sends_failed_jobs_again_once_and_collect_keeps_one_line_each(
    local: Local,
) -> None:
    """The cause of the 400s is fixed, two `retry --code provider_400` run at once: each
    job is called once more and succeeds, `collect` has one line per job, the old errors
    are in the jobs' history. The job over the cap, sent again, fails again."""
    default = SimulatorSettings().completion_tokens_only
    local.configure(completion_tokens_only=[*default, "gpt-4.1"])
    try:
        batch = submit_failing(local)
    finally:
        local.configure(completion_tokens_only=default)  # the cause is fixed
    calls = local.requests()
    racing = [run_cli(local, "retry", batch, "--code", "provider_400", "--json") for _ in range(2)]
    outputs = [proc.communicate(timeout=120) for proc in racing]
    assert [proc.returncode for proc in racing] == [0, 0], outputs
    reports = [json.loads(stdout) for stdout, _ in outputs]
    assert sum(r["sent"] for r in reports) == 3, reports
    assert all(r["other_codes"] == {"over_request_cap": 1} for r in reports)
    final = local.wait(batch, lambda s: s["done"] and s["succeeded"] == 4)
    assert (final["failed"], final["total"]) == (1, 5)
    assert local.requests() - calls == 3, "each retried job called once"
    results = local.workdir / "retry-all.jsonl"
    collected = local.json("collect", batch, "-o", str(results))
    assert (collected["results"], collected["errors"], collected["unfinished"]) == (4, 1, 0)
    lines_out = read_jsonl(results) + read_jsonl(results.with_name("retry-all.errors.jsonl"))
    assert [line["custom_id"] for line in lines_out] == RETRY_IDS  # one line per job
    assert all(line["response"]["status_code"] == 200 for line in lines_out[:4])
    assert lines_out[4]["error"]["code"] == "over_request_cap"
    for custom_id in ("g0", "g1", "g2"):
        old = s3_json(local, f"history/{batch}/{custom_id}/1.json")
        assert (old["custom_id"], old["response"]["status_code"]) == (custom_id, 400)
    jobs = local.rt.batches.jobs(batch, RETRY_IDS)
    assert [(j.state.value, j.retries) for j in jobs] == [
        ("succeeded", 1),
        ("succeeded", 0),
        ("succeeded", 1),
        ("succeeded", 1),
        ("failed", 0),
    ]
    # the cause of the last one is not fixed: sent again, it fails again, still one line
    assert local.json("retry", batch)["sent"] == 1
    again = local.wait(batch, lambda s: s["done"])
    assert (again["succeeded"], again["failed"]) == (4, 1)
    assert s3_json(local, f"history/{batch}/huge/1.json")["error"]["code"] == "over_request_cap"
    assert local.json("collect", batch, "-o", str(results))["errors"] == 1
    assert [line["custom_id"] for line in read_jsonl(results)] == RETRY_IDS[:4]
    assert [e["custom_id"] for e in read_jsonl(results.with_name("retry-all.errors.jsonl"))] == [
        "huge"
    ]
    assert local.requests() - calls == 3, "over the cap: never sent to the provider"
    nothing = local.json("retry", batch, "--code", "provider_400")
    assert (nothing["status"], nothing["sent"]) == ("nothing_to_retry", 0)
    assert nothing["other_codes"] == {"over_request_cap": 1}


def test_retry_covers_dead_lettered_jobs_and_a_later_redrive_calls_nothing(local: Local) -> None:
    batch = submit_dead_letters(local, 2, "q", "low")
    calls = local.requests()
    report = local.json("retry", batch, "--code", "dead_lettered")
    assert (report["sent"], report["by_code"]) == (2, {"dead_lettered": 2})
    final = local.wait(batch, lambda s: s["succeeded"] == 2)
    assert final["dead_lettered"] == 0 and final["done"]
    assert local.requests() - calls == 2
    # their first messages are still in the DLQ: redriven, they find the jobs finished
    assert local.json("redrive", "--priority", "low")["total"] == 2
    deadline = time.monotonic() + 30
    while queued_anywhere(local):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert local.requests() - calls == 2 and local.status(batch)["succeeded"] == 2


def test_retry_refuses_a_cancelled_batch_and_leaves_invalid_lines(local: Local) -> None:
    path = local.write("to-cancel.jsonl", job_lines(2, "x", priority="low"))
    batch = local.json("submit", str(path), "--batch-id", "r-cancelled")["batch_id"]
    local.cli("cancel", batch)
    local.wait(batch, lambda s: s["done"])
    refused = one_line_error(local.cli("retry", batch, code=1))
    assert refused == (
        "error: batch r-cancelled was cancelled: its jobs are not run again (the workers "
        "would cancel them); submit the jobs to run as a new batch"
    )
    # a line a worker finds invalid (sent straight to a queue) keeps no request to resend
    bad = {"custom_id": "bad1", "batch_id": "r-straight", "role": "nope", "prompt": "x"}
    me = caller_principal(boto3.client("sts"))  # only the registrant's messages are accepted
    local.rt.batches.register(
        "r-straight", total=1, priority="low", checksum="0" * 64, registrant=me
    )
    boto3.client("sqs").send_message(
        QueueUrl=local.rt.resources.queues[Priority.low], MessageBody=json.dumps(bad)
    )
    deadline = time.monotonic() + 30
    while (info := local.rt.batches.get("r-straight")) is None or info.failed < 1:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    report = local.json("retry", "r-straight")
    assert (report["status"], report["selected"], report["not_retriable"]) == (
        "nothing_to_retry",
        0,
        1,
    )
    human = local.cli("retry", "r-straight")
    assert "batch r-straight has no failed job to send again" in human.stdout
    assert "1 failed job(s) of batch r-straight cannot be sent again" in human.stderr


def test_an_invalid_file_lists_every_error_and_sends_nothing(local: Local) -> None:
    lines = job_lines(8, "v", priority="low")
    lines[1] = '{"custom_id": "v-broken", "prompt": '
    lines[3] = json.dumps({"custom_id": "v-hot", "prompt": "x", "temperature": 9})
    lines[6] = json.dumps({"custom_id": "v-robot", "messages": [{"role": "robot", "content": "x"}]})
    path = local.write("invalid.jsonl", lines)
    calls = local.requests()
    result = local.cli("submit", str(path), code=1)
    listed = [line for line in result.stderr.splitlines() if line.startswith("line ")]
    assert [line.split(":")[0].split(",")[0] for line in listed] == ["line 2", "line 4", "line 7"]
    assert "temperature: must be at most 2" in listed[1] and "messages[0].role" in listed[2]
    assert result.stderr.splitlines()[-1].startswith("error: ")
    assert "3 invalid line(s) of 8; nothing was sent" in result.stderr
    as_json = json.loads(local.cli("submit", str(path), "--json", code=1).stdout)
    assert as_json["status"] == "invalid" and len(as_json["errors"]) == 3
    assert queued_anywhere(local) == 0 and local.requests() == calls
    local.cli("status", as_json["batch_id"], code=1)  # never registered
    dry = local.json("submit", str(path), "--dry-run", "--skip-invalid")
    assert (dry["status"], dry["valid"], dry["invalid"]) == ("dry_run", 5, 3)
    assert queued_anywhere(local) == 0


def one_line_error(result: Result) -> str:
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_bad_input_gets_one_line_and_an_exit_code(local: Local) -> None:
    missing = one_line_error(local.cli("submit", str(local.workdir / "nope.jsonl"), code=2))
    assert "no such file" in missing
    for command in (["status", "nope"], ["collect", "nope"], ["cancel", "nope"], ["retry", "nope"]):
        assert "batch 'nope' not found" in one_line_error(local.cli(*command, code=1))
    no_stack = one_line_error(local.cli("status", "--stack", "elsewhere", code=1))
    assert "no stack named 'elsewhere'" in no_stack and "chatbatch local up" in no_stack
    bad_id = one_line_error(local.cli("submit", __file__, "--batch-id", "a b", code=2))
    assert "--batch-id" in bad_id


def test_a_different_file_under_a_batch_id_is_refused_even_with_resend(local: Local) -> None:
    """Same custom_ids, other prompts: sent under the first file's batch id, the workers
    would skip them as finished and `collect` would return the first file's answers."""
    first = local.write(
        "first.jsonl",
        [json.dumps({"custom_id": f"r{i}", "prompt": f"first {i}"}) for i in range(3)],
    )
    other = local.write(
        "other.jsonl",
        [json.dumps({"custom_id": f"r{i}", "prompt": f"other {i}"}) for i in range(3)],
    )
    sums = [local.json("submit", str(p), "--dry-run")["checksum"] for p in (first, other)]
    local.json("submit", str(first), "--batch-id", "same-id")
    local.wait("same-id", lambda s: s["done"])
    calls = local.requests()
    for resend in ((), ("--resend",)):
        result = local.cli("submit", str(other), "--batch-id", "same-id", *resend, code=1)
        refused = result.stderr.strip().splitlines()[-1]  # after the validation progress bar
        assert refused == (
            f"error: batch 'same-id' was submitted from another file (checksum {sums[0][:12]}, "
            f"this file {sums[1][:12]}): choose another --batch-id (--resend sends only the "
            "same file again)"
        )
    # the local runtime's submit path refuses it too (the registering write checks it)
    with pytest.raises(SubmittedFromAnotherFile):
        local.rt.submit(other, "same-id")
    assert queued_anywhere(local) == 0 and local.requests() == calls
    info = local.rt.batches.get("same-id")
    assert info is not None and (info.checksum, info.total) == (sums[0], 3)
    # the same file again with --resend is sent; its finished jobs are skipped, not paid
    assert local.json("submit", str(first), "--batch-id", "same-id", "--resend")["sent"] == 3
    deadline = time.monotonic() + 30
    while queued_anywhere(local):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert local.requests() == calls
    collected = local.workdir / "same-id.jsonl"
    local.json("collect", "same-id", "-o", str(collected))
    answers = [
        r["response"]["body"]["choices"][0]["message"]["content"] for r in read_jsonl(collected)
    ]
    assert [("first" in a, "other" in a) for a in answers] == [(True, False)] * 3


def test_local_up_serves_other_processes_through_the_same_discovery(tmp_path: Path) -> None:
    """`chatbatch local up` in its own process; another process finds it by the stack."""
    chatbatch = Path(sys.executable).parent / "chatbatch"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CHATBATCH_"))}
    up = subprocess.Popen(
        [chatbatch, "local", "up", "--port", "0", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
        cwd=ROOT,
    )
    try:
        assert up.stdout is not None
        announced = json.loads(up.stdout.readline())
        assert announced["stack"] == "chatbatch" and announced["endpoint"].startswith("http://127.")
        client = env | announced["env"]
        command = [chatbatch, "status", "--json"]
        status = subprocess.run(
            command, check=False, env=client, cwd=ROOT, capture_output=True, text=True
        )
        assert status.returncode == 0, status.stderr
        assert [q["queued"] for q in json.loads(status.stdout)["queues"]] == [0, 0, 0, 0, 0]
    finally:
        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=30) == 0


def test_a_batch_of_anthropic_lines_is_collected_as_anthropic_results_in_one_file(
    local: Local,
) -> None:
    say = [{"role": "user", "content": "hello there"}]
    lines = [
        json.dumps(
            {
                "custom_id": f"m{i}",
                "params": {"model": "gpt-4.1", "max_tokens": 30, "messages": say},
            }
        )
        for i in range(3)
    ]
    path = local.write("anthropic.jsonl", lines)
    batch = local.json("submit", str(path), "--batch-id", "anthropic-1")["batch_id"]
    local.wait(batch, lambda s: bool(s["done"]))
    results = local.workdir / "anthropic-results.jsonl"
    collected = local.json("collect", batch, "-o", str(results))
    assert (collected["results"], collected["errors"], collected["errors_file"]) == (3, 0, None)
    assert not results.with_name("anthropic-results.errors.jsonl").exists()
    read = [MessageBatchIndividualResponse.model_validate(line) for line in read_jsonl(results)]
    assert [r.custom_id for r in read] == ["m0", "m1", "m2"]
    assert all(r.result.type == "succeeded" for r in read)


def test_batches_lists_every_batch_newest_first_with_its_counts_cost_and_state(
    local: Local, finished: Finished
) -> None:
    local.configure(latency_ms=400)
    try:
        path = local.write("listed.jsonl", job_lines(20, "l", priority="low"))
        running = local.json("submit", str(path))["batch_id"]
        listing = local.json("batches")
        table = local.cli("batches").stdout
        newest = local.json("batches", "--limit", "1")
        local.json("cancel", running)
        local.wait(running, lambda s: s["done"])
    finally:
        local.configure(latency_ms=0)
    rows = {row["batch_id"]: row for row in listing["batches"]}
    assert listing["found"] == len(rows) >= 2
    created = [row["created"] for row in listing["batches"]]
    assert created == sorted(created, reverse=True), "newest first"
    assert listing["batches"][0]["batch_id"] == running
    status = local.status(finished.batch_id)
    info = local.rt.batches.get(finished.batch_id)
    assert info is not None and info.created is not None
    done = rows[finished.batch_id]
    assert (done["total"], done["done"], done["failed"], done["state"]) == (48, 48, 0, "complete")
    assert Decimal(done["cost_usd"]) == Decimal(status["cost_usd"]) > 0
    assert abs(dt.datetime.fromisoformat(done["created"]).timestamp() - info.created) < 1
    unfinished = rows[running]
    assert (unfinished["total"], unfinished["state"]) == (20, "running")
    assert unfinished["done"] < 20 and unfinished["failed"] == 0
    # --limit: the newest only, and how many there are
    assert [row["batch_id"] for row in newest["batches"]] == [running]
    assert newest["found"] == listing["found"]
    for batch_id in (running, finished.batch_id):
        assert batch_id in table
    assert "complete" in table and "running" in table
    cancelled = {row["batch_id"]: row for row in local.json("batches")["batches"]}[running]
    assert cancelled["state"] == "cancelled"
