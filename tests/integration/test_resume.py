"""`chatbatch local run` keeps what it paid for: killed (SIGKILL) at any point or stopped
(Ctrl-C), the same command again finishes the file. Every job ends with one answer, its
own; the provider billed each job once except the calls in flight at a kill, and those
are booked; the costs, the summary and the budget ledger agree with what was billed.

The run is a child process, as a user runs it, against the simulator in another process
(``python -m chatbatch.local.simulator``), so the provider's bill outlives every kill.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest

from bench._common import read_jsonl
from chatbatch.core.config import Config, load_config
from chatbatch.core.job_lines import parse_line
from chatbatch.local.aws import create_resources, moto_in_process
from chatbatch.local.journal.state_dir import durable
from chatbatch.local.simulator import Stats, answer_for
from chatbatch.state.budget.budget import Budget

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
CHATBATCH = Path(sys.executable).parent / "chatbatch"
KEY = "sk-resume-test"
CONCURRENCY = 2  # pollers per priority; every job here is `normal`
BATCH_SIZE = 40  # the config's worker.batch_size: jobs of one invocation run together
IN_FLIGHT = CONCURRENCY * BATCH_SIZE  # the most jobs a run can have under way


@pytest.fixture(scope="module")
def config() -> Config:
    config = load_config(ROOT / "chatbatch.toml")
    assert config.worker.batch_size == BATCH_SIZE
    return config


@dataclass
class Provider:
    """The simulator in its own process."""

    url: str

    def stats(self) -> Stats:
        return Stats.model_validate(httpx.get(self.url.removesuffix("/v1") + "/stats").json())

    def undelivered(self) -> int:
        """Requests received and never answered whole: in flight, or cut short by a
        client that left (billed, unread)."""
        s = self.stats()
        refused = sum(n for status, n in s.by_status.items() if status != "200")
        return s.requests - s.completions - refused


@pytest.fixture
def provider() -> Iterator[Provider]:
    command = [sys.executable, "-m", "chatbatch.local.simulator", "--port", "0"]
    command += ["--latency-ms", "250", "--api-key", KEY]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stdout is not None
        yield Provider(proc.stdout.readline().split()[-1])
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def clean_env() -> dict[str, str]:
    """This environment without AWS's or chatbatch's settings."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CHATBATCH_"))}


def local(
    provider: Provider, *args: str | Path, stdout: int, stderr: int = subprocess.PIPE
) -> subprocess.Popen[str]:
    """`chatbatch local ARGS` against ``provider`` in a child process."""
    command = [CHATBATCH, "local", *args, "--provider-url", provider.url]
    command += ["--concurrency", str(CONCURRENCY), "--config", ROOT / "chatbatch.toml"]
    return subprocess.Popen(
        [str(c) for c in command],
        env=clean_env() | {"CHATBATCH_API_KEY": KEY},
        stdout=stdout,
        stderr=stderr,
        text=True,
    )


@dataclass
class LocalRun:
    """`chatbatch local run JOBS --out OUT` against ``provider``, one process at a time."""

    jobs: Path
    out: Path
    provider: Provider
    flags: tuple[str, ...] = ("--rpm", "240")
    proc: subprocess.Popen[str] | None = None
    stderr: list[str] = field(default_factory=list)
    undelivered: int = 0  # the provider's, when this process started

    def start(self, *extra: str) -> LocalRun:
        self.undelivered = self.provider.undelivered()
        command = ["run", self.jobs, "--out", self.out, "--json", *self.flags, *extra]
        self.proc = local(self.provider, *command, stdout=subprocess.DEVNULL)
        return self

    def answered(self) -> int:
        """Lines in results.jsonl now (the run appends them as jobs finish)."""
        path = self.out / "results.jsonl"
        return path.read_bytes().count(b"\n") if path.exists() else 0

    def until(self, ready: Callable[[], bool], timeout: float = 120) -> LocalRun:
        deadline = time.monotonic() + timeout
        while not ready():
            assert self.proc is not None and self.proc.poll() is None, self.finish()
            assert time.monotonic() < deadline, "the run never got there"
            time.sleep(0.02)
        return self

    def kill(self) -> int:
        """SIGKILL; returns the provider's calls that were in flight at that moment."""
        assert self.proc is not None
        before = self.undelivered
        self.proc.kill()
        self.finish()
        time.sleep(0.3)  # what the dead process had sent is on its way
        return self.provider.undelivered() - before

    def finish(self, timeout: float = 180) -> int:
        assert self.proc is not None
        _, err = self.proc.communicate(timeout=timeout)
        self.stderr.append(err)
        return self.proc.returncode


def write_jobs(path: Path, n: int, word: str) -> Path:
    lines = [{"custom_id": f"{word}-{i:03d}", "prompt": f"{word} question {i}"} for i in range(n)]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def assert_each_job_answered_once_its_own(
    jobs: Path, out: Path, config: Config, results: str = "results.jsonl"
) -> None:
    expected = {}
    for number, text in enumerate(jobs.read_text().splitlines(), 1):
        job = parse_line(text, config, line=number)
        body = job.request_body(config.models[job.model])
        expected[job.custom_id] = answer_for(body["messages"], body.get("max_tokens"))[0]
    answers = read_jsonl(out / results)
    assert [r["custom_id"] for r in answers] == list(expected), "one line per job, input order"
    for answer in answers:
        content = answer["response"]["body"]["choices"][0]["message"]["content"]
        assert content == expected[answer["custom_id"]]
    if results == "results.jsonl":
        assert read_jsonl(out / "errors.jsonl") == []


def billed_usd(stats: Stats, config: Config) -> Decimal:
    """The simulator's bill at the price table (the test's own arithmetic)."""
    models = {m.model_id: m for m in config.models.values()}
    total = Decimal(0)
    for model_id, bill in stats.billed_by_model.items():
        model = models[model_id]
        total += (
            (bill.prompt_tokens - bill.cached_tokens) * model.input_per_m
            + bill.cached_tokens * model.cached_input_per_m
            + bill.completion_tokens * model.output_per_m
        ) / 1_000_000
    return total


def ledger_spent(state: Path, config: Config) -> Decimal:
    """What the budget ledger left in ``state`` says was spent today."""
    with moto_in_process():
        resources = create_resources(config)
        with durable(state, resources):
            return Budget(boto3.client("dynamodb"), resources.table, config).usage().spent_usd


def test_killed_anywhere_the_same_command_finishes_and_pays_each_job_once(
    tmp_path: Path, provider: Provider, config: Config
) -> None:
    n = 80
    run = LocalRun(write_jobs(tmp_path / "jobs.jsonl", n, "kill"), tmp_path / "out", provider)
    in_flight = []
    # 1. before any answer: the first calls are out, none has come back
    run.start().until(lambda: provider.stats().requests > 0)
    in_flight.append(run.kill())
    assert run.answered() == 0
    # 2. mid-run
    run.start().until(lambda: run.answered() >= n // 3)
    in_flight.append(run.kill())
    assert n // 3 <= run.answered() < n
    # 3. at the end: every answer is in, the final files are being written
    run.start().until(lambda: run.answered() >= n)
    in_flight.append(run.kill())
    # 4. the same command again
    assert run.start().finish() == 0, run.stderr[-1]
    assert "resuming from" in run.stderr[-1]

    assert_each_job_answered_once_its_own(run.jobs, run.out, config)
    stats = provider.stats()
    assert in_flight[0] > 0 and all(k <= IN_FLIGHT for k in in_flight), in_flight
    # each job billed once, but for the calls in flight at a kill: their reservations
    # were armed, so the next run books each at its worst case (a cost record of its
    # own) and asks again; no more than a run can have in flight
    again = stats.billed_calls - n
    assert stats.duplicates + stats.billed_unread == again
    summary = json.loads((run.out / "summary.json").read_text())
    costs = read_jsonl(run.out / "costs.jsonl")
    unread = [c for c in costs if c["attempt"] is not None]
    assert all(c["usage_estimated"] for c in unread)
    assert 0 <= again <= len(unread) <= len(in_flight) * IN_FLIGHT, (stats, in_flight)
    assert unread, "the calls in flight at the first kill were booked"
    assert sorted(c["custom_id"] for c in costs if c["attempt"] is None) == sorted(
        f"kill-{i:03d}" for i in range(n)
    )
    booked = sum(Decimal(c["cost_usd"]) for c in costs)
    assert Decimal(str(summary["cost_usd"])) == booked >= billed_usd(stats, config) > 0
    assert ledger_spent(run.out / ".state", config) == booked
    assert (summary["succeeded"], summary["failed"], summary["interrupted"]) == (n, 0, False)
    assert summary["estimated_calls"] == len(unread)
    # the last run found the jobs answered final (but those still settling at the kill)
    assert n - IN_FLIGHT <= summary["resumed_jobs"] <= n


def test_ctrl_c_stops_with_partial_answers_and_the_same_command_resumes(
    tmp_path: Path, provider: Provider, config: Config
) -> None:
    n = IN_FLIGHT + 40  # more than the run can have under way when it is stopped
    run = LocalRun(write_jobs(tmp_path / "jobs.jsonl", n, "stop"), tmp_path / "out", provider)
    run.start().until(lambda: run.answered() >= 5)
    assert run.proc is not None
    run.proc.send_signal(signal.SIGINT)
    assert run.finish(timeout=60) == 130
    assert "To resume, run the same command again" in run.stderr[-1]
    summary = json.loads((run.out / "summary.json").read_text())
    answered = read_jsonl(run.out / "results.jsonl")
    assert summary["interrupted"] is True
    assert 5 <= summary["succeeded"] == len(answered) < n
    assert len(read_jsonl(run.out / "costs.jsonl")) == len(answered)
    calls = provider.stats().billed_calls
    # the calls in flight were let finish: nothing was left to ask again
    assert calls == len(answered) or "still running" in run.stderr[-1]

    assert run.start().finish() == 0, run.stderr[-1]
    assert_each_job_answered_once_its_own(run.jobs, run.out, config)
    stats = provider.stats()
    if "still running" not in run.stderr[0]:
        assert stats.billed_calls == n and stats.duplicates == 0
    summary = json.loads((run.out / "summary.json").read_text())
    assert summary["resumed_jobs"] == len(answered) and summary["succeeded"] == n


def test_another_file_under_the_same_out_is_refused_and_fresh_starts_over(
    tmp_path: Path, provider: Provider, config: Config
) -> None:
    first = write_jobs(tmp_path / "first.jsonl", 3, "first")
    other = write_jobs(tmp_path / "other.jsonl", 3, "other")
    out = tmp_path / "out"
    assert LocalRun(first, out, provider).start().finish() == 0
    refused = LocalRun(other, out, provider).start()
    assert refused.finish() == 1
    assert "holds the run of another file" in refused.stderr[-1]
    assert "--fresh" in refused.stderr[-1]
    assert_each_job_answered_once_its_own(first, out, config)  # untouched
    assert LocalRun(other, out, provider).start("--fresh").finish() == 0
    assert_each_job_answered_once_its_own(other, out, config)
    assert provider.stats().billed_calls == 6


@dataclass
class LocalUp:
    """`chatbatch local up --state STATE` against ``provider``, and the CLI beside it."""

    state: Path
    provider: Provider
    proc: subprocess.Popen[str] | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def log(self) -> Path:
        return self.state.parent / "local-up.log"

    def stop(self) -> None:
        """Ctrl-C: it ends once the invocations under way have (at most the function's
        timeout, 120 s in the shipped config), with exit code 0."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        try:
            code = self.proc.wait(timeout=150)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            tail = self.log.read_text()[-3000:]
            raise AssertionError(f"no stop on Ctrl-C; its log ends:\n{tail}") from None
        assert code == 0, self.log.read_text()[-3000:]

    def start(self) -> LocalUp:
        command = ["up", "--port", "0", "--json", "--state", self.state, "--rpm", "240"]
        with self.log.open("a") as log:  # its workers' log, for a failure to show
            self.proc = local(self.provider, *command, stdout=subprocess.PIPE, stderr=log)
        assert self.proc.stdout is not None
        # its first line, even when the workers it resumes log at once (to stderr, --json)
        self.env = clean_env() | json.loads(self.proc.stdout.readline())["env"]
        # read on, or a full pipe would stop it
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()
        return self

    def cli(self, *args: str) -> Any:
        command = [str(CHATBATCH), *args, "--config", str(ROOT / "chatbatch.toml"), "--json"]
        done = subprocess.run(command, env=self.env, capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def until(self, ready: Callable[[dict[str, Any]], bool], batch: str) -> None:
        deadline = time.monotonic() + 120
        while not ready(self.cli("status", batch)):
            assert time.monotonic() < deadline, "the batch never got there"
            time.sleep(0.2)


def test_local_up_restarted_on_its_state_carries_on_its_batches(
    tmp_path: Path, provider: Provider, config: Config
) -> None:
    n = 60
    jobs = write_jobs(tmp_path / "jobs.jsonl", n, "up")
    up = LocalUp(tmp_path / "state", provider).start()
    assert up.cli("submit", str(jobs), "--batch-id", "up")["sent"] == n
    up.until(lambda status: status["succeeded"] >= n // 3, "up")
    assert up.proc is not None
    up.proc.kill()
    up.proc.wait()

    up.start()  # the same state: the jobs still queued come back
    try:
        up.until(lambda status: status["done"], "up")
        collected = tmp_path / "collected.jsonl"
        up.cli("collect", "up", "-o", str(collected))
    finally:
        up.stop()
    assert_each_job_answered_once_its_own(jobs, collected.parent, config, collected.name)
    stats = provider.stats()
    assert n <= stats.billed_calls <= n + IN_FLIGHT
