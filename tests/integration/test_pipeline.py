"""The whole pipeline through the local runtime: moto, the simulator, the emulated Lambda.

Each test runs a small file end to end with `LocalRuntime` (the code behind
`chatbatch local run`) and checks what a user would: every job accounted for, every
answer the simulator's answer to *that* job, every cent counted once.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import boto3
import pytest
from mypy_boto3_sqs.literals import QueueAttributeNameType

from bench._capacity import metered
from bench._common import watched, write_config
from chatbatch.client.budget import set_daily_limit
from chatbatch.client.costs import load_report
from chatbatch.client.deployment import connect
from chatbatch.core.config import Priority
from chatbatch.core.days import next_midnight, utc_day
from chatbatch.core.job_lines import parse_line
from chatbatch.core.jobs import Job
from chatbatch.core.pricing import from_nanos, to_nanos
from chatbatch.core.principals import caller_principal
from chatbatch.local.options import LocalOptions
from chatbatch.local.runtime import LOCAL_KEY, LocalRuntime
from chatbatch.local.simulator import FaultKind, SimulatorSettings, Stats, answer_for
from chatbatch.local.summary import Summary
from chatbatch.state import batches as batches_module
from chatbatch.state.budget.budget import Budget
from chatbatch.state.budget.ledger import reservation_key
from chatbatch.state.store import Store
from chatbatch.worker import crash as crashes
from chatbatch.worker import pipeline, services
from chatbatch.worker.intake import ATTR_OWNER, Intake
from tests.integration.clocks import ShiftedClock

ROOT = Path(__file__).resolve().parents[2]
PRIORITIES = [p.value for p in Priority]


def job_lines(n: int, *, seed: int = 1, prefix: str = "j") -> list[str]:
    """A mixed file: all priorities, roles, streaming, both line forms."""
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        cid = f"{prefix}{i:04d}"
        prio = PRIORITIES[i % 4]
        kind = i % 5
        if kind == 0:
            line: dict[str, Any] = {
                "custom_id": cid,
                "role": "classify",
                "priority": prio,
                "prompt": f"label item {i} {rng.random():.6f}",
            }
        elif kind == 1:
            line = {
                "custom_id": cid,
                "method": "POST",
                "url": "/v1/chat/completions",
                "priority": prio,
                "body": {
                    "model": "gpt-4.1",
                    "max_tokens": 60,
                    "messages": [{"role": "user", "content": f"explain {i} briefly"}],
                },
            }
        elif kind == 2:
            line = {
                "custom_id": cid,
                "prompt": f"stream facts about {i}",
                "stream": True,
                "priority": prio,
                "max_tokens": 80,
            }
        elif kind == 3:
            line = {
                "custom_id": cid,
                "role": "code",
                "prompt": f"write fn number {i}",
                "priority": prio,
                "max_tokens": 100,
            }
        else:
            line = {
                "custom_id": cid,
                "model": "gemini-2.5-flash",
                "priority": prio,
                "prompt": f"list questions about {i}",
                "max_tokens": 50,
            }
        lines.append(json.dumps(line))
    return lines


def write(tmp_path: Path, lines: list[str], name: str = "jobs.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@contextmanager
def runtime(**options: Any) -> Iterator[LocalRuntime]:
    with LocalRuntime(LocalOptions(**options)) as rt:
        yield rt


def registered(rt: LocalRuntime, batch_id: str) -> None:
    """Register ``batch_id`` as this process's: the jobs a test sends straight to a queue
    name a batch, and the workers accept them only from its registrant."""
    me = caller_principal(boto3.client("sts"))
    rt.batches.register(batch_id, total=1, priority="normal", checksum="0" * 64, registrant=me)


def ledger_spent(rt: LocalRuntime) -> Decimal:
    budget = Budget(boto3.client("dynamodb"), rt.resources.table, rt.config)
    usage = budget.usage()
    assert usage.reserved_usd == 0, "every reservation settled or released"
    return usage.spent_usd


def queue_depth(rt: LocalRuntime, url: str) -> int:
    """Messages in the queue: visible, in flight and delayed."""
    names: list[QueueAttributeNameType] = [
        "ApproximateNumberOfMessages",
        "ApproximateNumberOfMessagesNotVisible",
        "ApproximateNumberOfMessagesDelayed",
    ]
    attrs = boto3.client("sqs").get_queue_attributes(QueueUrl=url, AttributeNames=names)
    return sum(int(v) for v in attrs["Attributes"].values())


def dlq_depth(rt: LocalRuntime) -> int:
    sqs = boto3.client("sqs")
    total = 0
    for url in rt.resources.dlqs.values():
        attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        total += int(attrs["ApproximateNumberOfMessages"])
        total += int(attrs["ApproximateNumberOfMessagesNotVisible"])
    return total


def expected_answer(job: Job, rt: LocalRuntime) -> str:
    body = job.request_body(rt.config.models[job.model])
    return answer_for(body["messages"], body.get("max_tokens"))[0]


def assert_costs_counted_once(rt: LocalRuntime, out: Path, summary: Summary) -> None:
    """One cost record per succeeded job, one per call booked unread (its own id), and
    the records, the results, the summary and the ledger all add up to the same money."""
    costs = read_jsonl(out / "costs.jsonl")
    results = read_jsonl(out / "results.jsonl")
    jobs = [c for c in costs if c.get("attempt") is None]
    unread = [c for c in costs if c.get("attempt") is not None]
    assert len({c["custom_id"] for c in jobs}) == len(jobs) == summary.succeeded
    assert len({c["attempt"] for c in unread}) == len(unread)
    assert all(c["usage_estimated"] for c in unread)
    estimated = sum(bool(c["usage_estimated"]) for c in costs)
    assert estimated == summary.estimated_calls
    from_records = sum(Decimal(c["cost_usd"]) for c in costs)
    assert sum(c["cost_nanos"] for c in costs) == to_nanos(Decimal(str(summary.cost_usd)))
    assert ledger_spent(rt) == from_records
    unread_usd = sum(Decimal(c["cost_usd"]) for c in unread)
    from_results = sum(Decimal(str(r["chatbatch"]["cost_usd"])) for r in results)
    assert from_results + unread_usd == from_records


def test_every_job_is_accounted_for_and_gets_its_own_answer(tmp_path: Path, config):
    lines = job_lines(48)
    lines.insert(5, '{"custom_id": "broken", "prompt": ')
    lines.insert(17, json.dumps({"custom_id": "hot", "prompt": "x", "temperature": 9}))
    cached = {
        "messages": [{"role": "user", "content": "same question"}],
        "cache": True,
        "temperature": 0,
    }
    lines.append(json.dumps({"custom_id": "c1", **cached}))
    path = write(tmp_path, lines)
    faults = {FaultKind("500"): 0.05, FaultKind("reset"): 0.03, FaultKind("429"): 0.03}
    sim = SimulatorSettings(fault_rates=faults, latency_ms=5)
    with runtime(simulator=sim, seed=3) as rt:
        summary = rt.run(path, tmp_path / "out")
        assert_costs_counted_once(rt, tmp_path / "out", summary)
        stats = rt.simulator.stats() if rt.simulator else None
        # the same cacheable request later: answered from the cache, free, marked
        rt.wait(
            rt.submit(
                write(tmp_path, [json.dumps({"custom_id": "c2", **cached})], "c2.jsonl"), "later"
            )
        )
        c2 = rt.result("later", "c2")
    out = tmp_path / "out"
    assert summary.jobs_total == 51
    assert (summary.succeeded, summary.failed, summary.invalid_lines) == (49, 2, 2)
    assert summary.succeeded + summary.failed + summary.deferred + summary.dead_lettered == 51
    results = read_jsonl(out / "results.jsonl")
    errors = read_jsonl(out / "errors.jsonl")
    assert {e["custom_id"] for e in errors} == {"line-6", "hot"}
    assert all(e["error"]["message"].startswith("line ") for e in errors)
    # input order, and each answer is the simulator's answer to that very job
    valid = [parse_line(t, rt.config, line=n) for n, t in enumerate(lines, 1) if n not in (6, 18)]
    assert [r["custom_id"] for r in results] == [j.custom_id for j in valid]
    for job, result in zip(valid, results, strict=True):
        message = result["response"]["body"]["choices"][0]["message"]["content"]
        assert message == expected_answer(job, rt), job.custom_id
        assert result["chatbatch"]["model"] == job.model
    by_id = {r["custom_id"]: r for r in results}
    assert by_id["j0003"]["chatbatch"]["model"] == "gpt-4.1"  # role "code" routes to gpt-4.1
    assert by_id["j0000"]["chatbatch"]["model"] == "deepseek-chat"  # role "classify"
    assert (
        not by_id["c1"]["chatbatch"]["cached"] and Decimal(by_id["c1"]["chatbatch"]["cost_usd"]) > 0
    )
    assert c2 is not None and c2.chatbatch is not None and c2.response is not None
    assert c2.chatbatch.cached and c2.chatbatch.cost_usd == 0
    assert c2.response.body["choices"] == by_id["c1"]["response"]["body"]["choices"]
    assert stats is not None and stats.duplicates == 0 and stats.by_status.get("500", 0) > 0
    summary_file = json.loads((out / "summary.json").read_text())
    assert summary_file["aws_requests"]["sqs"]["ReceiveMessage"] > 0


def test_new_jobs_reserve_once_per_invocation(tmp_path: Path):
    """The fresh jobs of one invocation reserve in one transaction and settle in one (the
    group commit: ``worker/finals.py``), their reservations made armed for the
    invocation's calls: no arm write per job."""
    lines = [
        json.dumps({"custom_id": f"r{i}", "prompt": f"q{i}", "priority": "normal"})
        for i in range(80)
    ]
    with watched() as seen, runtime(concurrency=2) as rt, metered() as meter:
        meter.start()
        summary = rt.run(write(tmp_path, lines), tmp_path / "out")
        spent = ledger_spent(rt)  # and nothing left reserved
    assert summary.succeeded == 80 and spent == Decimal(str(summary.cost_usd))
    transactions = summary.aws_requests["dynamodb"]["TransactWriteItems"]
    invocations = seen.count
    assert transactions == 2 * invocations  # a reservation and a settle per invocation
    assert invocations < 20
    # budget items written outside transactions: the day's layout, no arms (80 before)
    assert meter.writes["budget"] <= 2, meter.writes


def test_jobs_handed_back_unsent_keep_their_reservation_unarmed(tmp_path: Path, config):
    """Jobs reserved armed as a group and handed back for want of rate-limit capacity
    (``max_throttle_wait_s`` 0) are unarmed as they go: each comes back, takes its
    reservation again and calls once. None is held off as if its call were in flight,
    none booked at a worst case it never cost: the ledger is what the calls cost."""
    lines = [json.dumps({"custom_id": f"t{i}", "prompt": f"q{i}"}) for i in range(24)]
    cfg = write_config(
        tmp_path / "chatbatch.json", config, worker={"max_throttle_wait_s": 0, "timeout_s": 30}
    )
    with runtime(config_path=cfg, rpm=240, concurrency=2, timeout_s=120) as rt:
        assert rt.simulator is not None
        summary = rt.run(write(tmp_path, lines), tmp_path / "out")
        stats = rt.simulator.stats()
        assert_costs_counted_once(rt, tmp_path / "out", summary)
    assert summary.succeeded == 24 and summary.estimated_calls == 0
    assert summary.aws_requests["sqs"].get("SendMessage", 0) > 0, "jobs were handed back"
    assert stats.requests == 24 and stats.by_status.get("429", 0) == 0
    assert summary.wall_s < 60, "no copy waited out a call that never went out"


def test_two_copies_of_a_job_in_flight_call_the_provider_once(tmp_path: Path):
    """A job sent twice (a resend, a duplicate): the copy that holds the reservation calls
    the provider; the other waits and, when it looks again, finds the job done."""
    body = json.dumps({"custom_id": "twin", "prompt": "only once", "batch_id": "twins"})
    sim = SimulatorSettings(latency_ms=1500)
    with runtime(simulator=sim) as rt:
        queue = rt.resources.queues[rt.config.defaults.priority]
        registered(rt, "twins")
        sqs = boto3.client("sqs")
        for _ in range(2):
            sqs.send_message(QueueUrl=queue, MessageBody=body)
        deadline = time.monotonic() + 60
        while queue_depth(rt, queue) and time.monotonic() < deadline:
            time.sleep(0.5)
        info = rt.batches.get("twins")
        stats = rt.simulator.stats() if rt.simulator else None
        spent = ledger_spent(rt)  # and nothing left reserved
        result = rt.result("twins", "twin")
        assert queue_depth(rt, queue) == 0, "the waiting copy came back and was dropped"
    assert stats is not None and stats.requests == 1
    assert info is not None and info.succeeded == 1 and info.provider_calls == 1
    assert result is not None and result.chatbatch is not None
    assert spent == result.chatbatch.cost_usd


def test_a_second_copy_after_midnight_waits_for_the_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Copy A reserves at 23:59:59 (by the budget's clock) and is still calling; copy B
    arrives at 00:00:01. B must wait and then be dropped, not reserve on the new day and
    call again; A's settle after midnight charges the day it reserved on."""
    clock = ShiftedClock()
    monkeypatch.setattr(services, "Budget", partial(Budget, clock=clock))
    midnight = next_midnight(time.time() + 3 * 86_400).timestamp()
    before, after = utc_day(midnight - 1), utc_day(midnight + 1)
    body = json.dumps({"custom_id": "late", "prompt": "once across midnight", "batch_id": "night"})
    with runtime(simulator=SimulatorSettings(latency_ms=4000)) as rt:
        assert rt.simulator is not None
        registered(rt, "night")
        queue = rt.resources.queues[rt.config.defaults.priority]
        sqs = boto3.client("sqs")
        clock.at(midnight - 1)
        sqs.send_message(QueueUrl=queue, MessageBody=body)  # copy A
        deadline = time.monotonic() + 60
        while not rt.simulator.stats().requests and time.monotonic() < deadline:
            time.sleep(0.1)
        clock.at(midnight + 1)  # A is calling the provider; now it is the next day
        sqs.send_message(QueueUrl=queue, MessageBody=body)  # copy B
        while queue_depth(rt, queue) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert queue_depth(rt, queue) == 0, "copy B came back and was dropped"
        requests = rt.simulator.stats().requests
        info = rt.batches.get("night")
        result = rt.result("night", "late")
        budget = Budget(boto3.client("dynamodb"), rt.resources.table, rt.config)
        yesterday, today = budget.usage(before), budget.usage(after)
    assert requests == 1, "the provider was called once"
    assert info is not None and (info.succeeded, info.provider_calls) == (1, 1)
    assert result is not None and result.chatbatch is not None
    assert (yesterday.spent_usd, yesterday.reserved_usd) == (result.chatbatch.cost_usd, 0)
    assert (today.spent_usd, today.reserved_usd) == (0, 0)


def test_two_messages_of_one_copy_in_flight_call_the_provider_once(tmp_path: Path):
    """Two messages of the same copy of a job overlap (an SQS duplicate, or a hand-back
    re-sent before its original was deleted): the second finds the reservation armed by a
    worker that may still be in its call, and waits instead of booking that call as dead
    and buying it again; the records stay equal to the ledger."""
    body = json.dumps({"custom_id": "twin", "prompt": "only once", "batch_id": "twins"})
    attrs: dict[str, Any] = {ATTR_OWNER: {"DataType": "String", "StringValue": "copy-x"}}
    sim = SimulatorSettings(latency_ms=2000)
    with runtime(simulator=sim, visibility_timeout_s=2) as rt:
        assert rt.simulator is not None
        registered(rt, "twins")
        queue = rt.resources.queues[rt.config.defaults.priority]
        sqs = boto3.client("sqs")
        sqs.send_message(QueueUrl=queue, MessageBody=body, MessageAttributes=attrs)
        deadline = time.monotonic() + 90
        while not rt.simulator.stats().requests and time.monotonic() < deadline:
            time.sleep(0.05)
        rt.simulator.inject("truncate")  # what a second call would get: billed, cut
        sqs.send_message(QueueUrl=queue, MessageBody=body, MessageAttributes=attrs)
        time.sleep(1)
        while queue_depth(rt, queue) and time.monotonic() < deadline:
            time.sleep(0.5)
        stats = rt.simulator.stats()
        spent = ledger_spent(rt)
        info = rt.batches.get("twins")
        report = load_report(
            boto3.client("s3"), rt.resources.bucket, batch="twins", batches=rt.batches
        )
    assert stats.requests == 1 and stats.billed_unread == 0, "the provider was called once"
    assert info is not None and (info.succeeded, info.estimated_calls) == (1, 0)
    assert report.total.cost_usd == spent == from_nanos(info.cost_nanos) > 0
    assert report.total.estimated_calls == 0


def redelivered_run(tmp_path: Path, config: Any, prefix: str, n: int) -> tuple[Summary, Stats]:
    """``n`` small jobs through a runtime whose failed deliveries come back after 2 s and
    whose worker may run 30 s (a redelivery that waited for it would show): the run's
    summary, checked to book every cost once, and the simulator's stats."""
    lines = [json.dumps({"custom_id": f"{prefix}{i}", "prompt": f"q{i}"}) for i in range(n)]
    cfg = write_config(tmp_path / "chatbatch.json", config, worker={"timeout_s": 30})
    with runtime(config_path=cfg, visibility_timeout_s=2, concurrency=2, timeout_s=120) as rt:
        assert rt.simulator is not None
        summary = rt.run(write(tmp_path, lines), tmp_path / "out")
        assert_costs_counted_once(rt, tmp_path / "out", summary)
        return summary, rt.simulator.stats()


def test_a_group_reserved_before_midnight_and_handed_back_after_it_books_its_own_day(
    tmp_path: Path, config, monkeypatch: pytest.MonkeyPatch
):
    """Jobs reserved as a group (written armed) before midnight by the budget's clock,
    most handed back for rate-limit capacity and coming back after midnight (the clock
    jumps past it as the first call goes out): each takes its reservation back unarmed,
    is called once, and its cost goes to the day it reserved on; the new day holds
    nothing, nothing is booked at a worst case."""
    clock = ShiftedClock()
    monkeypatch.setattr(services, "Budget", partial(Budget, clock=clock))
    midnight = next_midnight(time.time() + 3 * 86_400).timestamp()
    before, after = utc_day(midnight - 1), utc_day(midnight + 1)
    clock.at(midnight - 60)  # the runtime's start on a loaded machine stays before it
    lines = [json.dumps({"custom_id": f"m{i}", "prompt": f"q{i}"}) for i in range(24)]
    cfg = write_config(
        tmp_path / "chatbatch.json", config, worker={"max_throttle_wait_s": 0, "timeout_s": 30}
    )
    with runtime(config_path=cfg, rpm=240, concurrency=2, timeout_s=120) as rt:
        assert rt.simulator is not None
        simulator = rt.simulator

        def past_midnight_once_calls_start() -> None:
            while not simulator.stats().requests:
                time.sleep(0.05)
            clock.at(midnight + 5)

        mover = threading.Thread(target=past_midnight_once_calls_start, daemon=True)
        mover.start()
        summary = rt.run(write(tmp_path, lines), tmp_path / "out")
        mover.join(5)
        stats = rt.simulator.stats()
        budget = Budget(boto3.client("dynamodb"), rt.resources.table, rt.config)
        first, second = budget.usage(before), budget.usage(after)
    results = read_jsonl(tmp_path / "out" / "results.jsonl")
    assert summary.succeeded == 24 and summary.estimated_calls == 0
    assert summary.aws_requests["sqs"].get("SendMessage", 0) > 0, "jobs were handed back"
    assert stats.requests == 24, "each job called once"
    booked = sum(Decimal(str(r["chatbatch"]["cost_usd"])) for r in results)
    assert (first.spent_usd, first.reserved_usd) == (booked, 0), "the day it reserved on"
    assert (second.spent_usd, second.reserved_usd) == (0, 0)


def test_a_job_that_raises_before_its_call_is_unarmed_for_its_redelivery(
    tmp_path: Path, config, monkeypatch: pytest.MonkeyPatch
):
    """Jobs reserved armed as a group raise before their call (a transient error): each
    is unarmed as it fails, so its redelivery takes the reservation back and calls once;
    none is booked as a call that went out."""
    failed_once: set[str] = set()
    gate = pipeline.pause.gate

    async def flaky(inv: Any, model: str) -> Any:
        # a first delivery's invocation raises for each of its jobs (one message id each)
        if fresh := sorted(set(inv.intakes) - failed_once):
            failed_once.add(fresh[0])
            raise RuntimeError("DynamoDB was not there")
        return await gate(inv, model)

    monkeypatch.setattr(pipeline.pause, "gate", flaky)
    summary, stats = redelivered_run(tmp_path, config, "x", 12)
    assert failed_once, "jobs raised before their call"
    assert summary.succeeded == 12 and summary.estimated_calls == 0
    assert stats.requests == 12


def test_a_job_whose_final_transaction_raised_is_finished_at_once_by_its_redelivery(
    tmp_path: Path, config, monkeypatch: pytest.MonkeyPatch
):
    """The jobs' final transactions raise (a throttled table), after their calls and
    their answers' objects: each job raises and comes back. Its reservation is marked as
    no longer in a call (``Budget.call_over``), so the redelivery finishes from the
    stored answer at once, instead of waiting ``worker.timeout_s`` (30 s here) for a
    worker that is no longer in it: one call each, nothing booked twice."""
    real = batches_module.transact
    failed: list[int] = []

    def throttled(ddb: Any, items: Any, **kwargs: Any) -> Any:
        finals = json.dumps(items).count('"succeeded"')
        if finals and len(failed) < 2:  # the group's transaction, then the job's own
            failed.append(finals)
            raise RuntimeError("ThrottlingError: the table refused the write")
        return real(ddb, items, **kwargs)

    monkeypatch.setattr(batches_module, "transact", throttled)
    summary, stats = redelivered_run(tmp_path, config, "f", 6)
    assert failed, "a final transaction raised"
    assert summary.succeeded == 6 and summary.estimated_calls == 0
    assert stats.requests == 6, "each job called once: its redelivery took the stored answer"
    assert summary.wall_s < 20, "no redelivery waited out worker.timeout_s"


@pytest.mark.parametrize("point", crashes.CRASH_POINTS)
def test_a_worker_killed_mid_job_counts_each_job_once(tmp_path: Path, config, point: str):
    cacheable = {"prompt": "cached question", "cache": True, "temperature": 0}
    lines = job_lines(14, seed=7) + [
        json.dumps({"custom_id": f"cache{i}", **cacheable}) for i in range(2)
    ]
    path = write(tmp_path, lines)
    crashed: set[str] = set()

    def crash(name: str, intake: Intake) -> bool:
        if name == point and intake.custom_id not in crashed and len(crashed) < 6:
            crashed.add(intake.custom_id)
            return True
        return False

    crashes.crash_hook = crash
    # a crashed job returns after 2 s; one killed in its call is booked once no Lambda that
    # sent it can still be running: worker.timeout_s (10 s here) after it was sent
    cfg = write_config(tmp_path / "chatbatch.json", config, worker={"timeout_s": 10})
    try:
        with runtime(visibility_timeout_s=2, config_path=cfg) as rt:
            summary = rt.run(path, tmp_path / "out")
            assert_costs_counted_once(rt, tmp_path / "out", summary)
            batch = rt.batches.get("local")
    finally:
        crashes.crash_hook = None
    assert crashed, "the crash point was reached"
    assert summary.succeeded == 16 and summary.failed == summary.dead_lettered == 0
    assert batch is not None and batch.succeeded == 16
    results = read_jsonl(tmp_path / "out" / "results.jsonl")
    assert len({r["custom_id"] for r in results}) == 16


def test_a_copy_taking_over_a_dead_copys_job_finishes_from_its_result(tmp_path: Path):
    """The first copy dies after storing the result; its claim expires before its message
    comes back; a second copy (a resend) takes over and must not call the provider again."""
    body = json.dumps({"custom_id": "orphan", "prompt": "answer once", "batch_id": "takeover"})
    died: list[str] = []

    def crash(name: str, intake: Intake) -> bool:
        if name == "after_s3_write" and not died:
            died.append(intake.owner)
            return True
        return False

    crashes.crash_hook = crash
    try:
        # the dead copy's message stays away for 5 minutes: the resend has to take over
        with runtime(visibility_timeout_s=300) as rt:
            queue = rt.resources.queues[rt.config.defaults.priority]
            registered(rt, "takeover")
            sqs = boto3.client("sqs")
            sqs.send_message(QueueUrl=queue, MessageBody=body)
            deadline = time.monotonic() + 30
            while not died and time.monotonic() < deadline:
                time.sleep(0.2)
            # time travel: the dead copy's reservation is past its deadline
            boto3.client("dynamodb").update_item(
                TableName=rt.resources.table,
                Key=reservation_key("takeover#orphan"),
                UpdateExpression="SET reclaim_at = :past",
                ExpressionAttributeValues={":past": {"N": str(time.time() - 1)}},
            )
            sqs.send_message(QueueUrl=queue, MessageBody=body)
            info = rt.batches.get("takeover")
            while (info is None or info.succeeded < 1) and time.monotonic() < deadline:
                time.sleep(0.3)
                info = rt.batches.get("takeover")
            stats = rt.simulator.stats() if rt.simulator else None
            spent = ledger_spent(rt)  # and nothing left reserved
            result = rt.result("takeover", "orphan")
    finally:
        crashes.crash_hook = None
    assert died, "the first copy died after its S3 write"
    assert info is not None and info.succeeded == 1
    assert stats is not None and stats.requests == 1, "the provider was called once"
    assert result is not None and result.chatbatch is not None
    assert spent == result.chatbatch.cost_usd


def test_budget_deferral_and_throttling_never_dead_letter(tmp_path: Path, config):
    path = write(tmp_path, job_lines(24, seed=5))
    # 2 deliveries before the DLQ: if a hand-back counted as a delivery, jobs would land there
    base = config.model_copy(
        update={
            "worker": config.worker.model_copy(
                update={"max_receive_count": 2, "max_throttle_wait_s": 0}
            )
        }
    )
    cfg = tmp_path / "chatbatch.json"
    cfg.write_text(base.model_dump_json())
    with runtime(config_path=cfg, budget_usd=Decimal("0.001"), rpm=240, timeout_s=120) as rt:
        summary = rt.run(path, tmp_path / "out")
        assert summary.deferred > 0 and summary.dead_lettered == 0 and summary.failed == 0
        assert summary.succeeded + summary.deferred == 24
        assert dlq_depth(rt) == 0
        spent = ledger_spent(rt)
        assert spent <= Decimal("0.004")
        # raising the budget (`chatbatch budget set --daily 5`: it also lifts the pause the
        # spent day's budget opened) resumes the deferred jobs
        rt.register_stack()
        set_daily_limit(connect(rt.config), Decimal(5))
        plan = rt.submit(path)  # same batch id and ids: finished jobs are skipped
        info = rt.wait(plan, until=lambda i, p: i.finished >= p.valid)
        assert info.succeeded == 24 and info.deferred == 0 and info.dead_lettered == 0
        assert dlq_depth(rt) == 0
        assert info.throttled == 0


def worker_config(tmp_path: Path, config: Any, **worker: Any) -> Path:
    """The test config with these ``[worker]`` settings, as the runtime's JSON config."""
    cfg = tmp_path / "chatbatch.json"
    update = {"worker": config.worker.model_copy(update=worker)}
    cfg.write_text(config.model_copy(update=update).model_dump_json())
    return cfg


def expired_jobs(rt: LocalRuntime, out: Path, summary: Summary) -> list[dict[str, Any]]:
    """The run's error lines, all ``batch_expired`` (OpenAI's code), each job counted
    failed once; nothing left reserved (an expired job gave its reservation back) and
    nothing dead-lettered."""
    errors = read_jsonl(out / "errors.jsonl")
    assert errors and {e["error"]["code"] for e in errors} == {"batch_expired"}
    info = rt.batches.get(summary.batch_id)
    assert info is not None and info.failed == summary.failed == len(errors)
    assert summary.succeeded + summary.failed == summary.jobs_total
    assert summary.deferred == summary.dead_lettered == dlq_depth(rt) == 0
    ledger_spent(rt)
    return errors


def test_a_job_handed_back_too_often_expires(tmp_path: Path, config):
    """Deferrals end: with ``worker.max_handbacks = 0`` a job the budget defers expires at
    once instead of cycling through the queue (as OpenAI's batches, code ``batch_expired``).
    (Synchronous jobs: a low job on gpt-4.1 would otherwise take the batch route.)"""
    cfg = worker_config(tmp_path, config, max_handbacks=0)
    with runtime(config_path=cfg, budget_usd=Decimal("0.001"), timeout_s=120) as rt:
        lines = write(tmp_path, job_lines(12, seed=5))
        summary = rt.run(lines, tmp_path / "out", route="sync")
        errors = expired_jobs(rt, tmp_path / "out", summary)
    assert all("worker.max_handbacks" in e["error"]["message"] for e in errors)


def test_a_job_older_than_its_max_age_expires(tmp_path: Path, config):
    """Deferrals end by age too: the first send time travels with the hand-backs, so a job
    throttled again and again expires once it is older than ``worker.max_job_age_s``."""
    cfg = worker_config(tmp_path, config, max_job_age_s=1, max_throttle_wait_s=0)
    # one priority, one model: every throttling hand-back waits seconds, not minutes
    lines = [
        json.dumps({"custom_id": f"a{i}", "prompt": f"q {i}", "max_tokens": 20}) for i in range(8)
    ]
    with runtime(config_path=cfg, rpm=30, timeout_s=90) as rt:
        summary = rt.run(write(tmp_path, lines), tmp_path / "out")
        errors = expired_jobs(rt, tmp_path / "out", summary)
    assert all("worker.max_job_age_s 1" in e["error"]["message"] for e in errors)


def test_a_poison_job_lands_in_its_dlq_after_max_receive_count(tmp_path: Path, config):
    path = write(
        tmp_path,
        [
            json.dumps({"custom_id": f"p{i}", "prompt": f"x{i}", "priority": "high"})
            for i in range(3)
        ],
    )
    base = config.model_copy(
        update={
            "worker": config.worker.model_copy(update={"max_receive_count": 2}),
            "retries": config.retries.model_copy(
                update={"max_attempts": 1, "base_s": 0.1, "max_backoff_s": 0.5}
            ),
        }
    )
    cfg = tmp_path / "chatbatch.json"
    cfg.write_text(base.model_dump_json())
    sim = SimulatorSettings(fault_rates={FaultKind("503"): 1.0})
    with runtime(config_path=cfg, simulator=sim, timeout_s=60) as rt:
        summary = rt.run(path, tmp_path / "out")
        assert (summary.dead_lettered, summary.succeeded, summary.failed) == (3, 0, 0)
        # the last delivery recorded why; SQS moves the message at its next receive
        errors = read_jsonl(tmp_path / "out" / "errors.jsonl")
        assert {e["error"]["code"] for e in errors} == {"dead_lettered"}
        assert all("503" in e["error"]["message"] for e in errors)
        assert ledger_spent(rt) == 0


def test_no_log_line_holds_the_key_or_a_prompt(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    secret_prompt = "my-very-private-prompt-text-4471"
    lines = [json.dumps({"custom_id": f"s{i}", "prompt": f"{secret_prompt} {i}"}) for i in range(6)]
    sim = SimulatorSettings(fault_rates={FaultKind("500"): 0.3})
    caplog.set_level(logging.DEBUG)
    with runtime(simulator=sim, log_level="DEBUG") as rt:
        rt.run(write(tmp_path, lines), tmp_path / "out")
    # every field of every record, as a JSON formatter would print it
    records = {r: json.dumps(vars(r), default=str) for r in caplog.records}
    ours = "\n".join(text for r, text in records.items() if not r.name.startswith("botocore"))
    assert "job answered" in ours and "retrying" in ours  # the logs were captured
    assert secret_prompt not in ours  # botocore's own DEBUG logs print AWS request bodies
    assert all(LOCAL_KEY not in text for text in records.values())


def test_prompts_and_answers_are_logged_only_when_switched_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    config = tmp_path / "chatbatch.toml"
    text = (ROOT / "chatbatch.toml").read_text()
    assert "log_prompts = false" in text
    config.write_text(text.replace("log_prompts = false", "log_prompts = true"))
    lines = [json.dumps({"custom_id": "shown", "prompt": "please-log-this-prompt"})]
    caplog.set_level(logging.INFO)
    with runtime(config_path=config, log_level="INFO") as rt:
        rt.run(write(tmp_path, lines), tmp_path / "out")
        answer = expected_answer(parse_line(lines[0], rt.config, line=1), rt)
    (record,) = [r for r in caplog.records if r.getMessage() == "job content"]
    assert record.custom_id == "shown"  # type: ignore[attr-defined]
    assert "please-log-this-prompt" in json.dumps(record.messages)  # type: ignore[attr-defined]
    assert record.answer == answer  # type: ignore[attr-defined]


def test_a_job_too_big_for_sqs_travels_through_s3(tmp_path: Path):
    big = "word " * 70_000  # 350 KB: over the 256 KiB an SQS message can hold
    lines = [
        json.dumps({"custom_id": "big", "prompt": big, "max_tokens": 20}),
        json.dumps({"custom_id": "small", "prompt": "tiny", "max_tokens": 20}),
    ]
    with runtime() as rt:
        summary = rt.run(write(tmp_path, lines), tmp_path / "out")
        claims = rt.store.get_text("claims/local/big.json")
    assert summary.succeeded == 2
    assert claims is not None and big in claims
    results = {r["custom_id"]: r for r in read_jsonl(tmp_path / "out" / "results.jsonl")}
    answer = results["big"]["response"]["body"]["choices"][0]["message"]["content"]
    assert answer.startswith("sim:") and "word word" in answer


def test_a_claim_checked_job_ends_in_its_batch_under_its_custom_id(tmp_path: Path):
    """Over the SQS size limit, submitted with a batch id, and from another producer whose
    stored line names neither: the job is the claim's, in the claim's batch; a claim whose
    stored job names another one is refused under the claim's ids."""
    big = "word " * 70_000  # 350 KB
    path = write(tmp_path, [json.dumps({"custom_id": "ticket-1", "prompt": big})])
    with runtime() as rt:
        rt.wait(rt.submit(path, "support"))
        bucket, queue = rt.resources.bucket, rt.resources.queues[Priority.high]
        for custom_id, stored in (
            ("ticket-2", {"prompt": big, "max_tokens": 20}),
            ("ticket-3", {"custom_id": "ticket-9", "prompt": big}),
        ):
            key = f"claims/support/{custom_id}.json"
            boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=json.dumps(stored))
            claim = {"bucket": bucket, "key": key, "custom_id": custom_id, "batch_id": "support"}
            boto3.client("sqs").send_message(
                QueueUrl=queue, MessageBody=json.dumps({"chatbatch_claim_check": claim})
            )
        deadline = time.monotonic() + 60
        info = rt.batches.get("support")
        while (info is None or info.finished < 3) and time.monotonic() < deadline:
            time.sleep(0.3)
            info = rt.batches.get("support")
        first, second = (
            rt.result("support", "ticket-1"),
            rt.result("support", "ticket-2"),
        )
        refused = rt.store.get_error("support", "ticket-3")
    assert info is not None and (info.succeeded, info.failed) == (2, 1)
    for result, custom_id in ((first, "ticket-1"), (second, "ticket-2")):
        assert result is not None and result.response is not None and result.chatbatch
        assert (result.custom_id, result.chatbatch.batch_id) == (custom_id, "support")
        assert "word word" in result.response.body["choices"][0]["message"]["content"]
    assert refused is not None and refused.error is not None
    assert refused.error.message.startswith(
        "job 'ticket-3': chatbatch_claim_check.custom_id: the claim check names 'ticket-3' "
        f"but s3://{bucket}/claims/support/ticket-3.json holds a job with custom_id 'ticket-9'"
    )


def test_a_job_bigger_than_the_rate_limit_fails_clearly(tmp_path: Path):
    lines = [
        json.dumps({"custom_id": "huge", "prompt": "x", "max_tokens": 500}),
        json.dumps({"custom_id": "fine", "prompt": "x", "max_tokens": 20}),
    ]
    with runtime(tpm=400) as rt:
        summary = rt.run(write(tmp_path, lines), tmp_path / "out")
        assert ledger_spent(rt) > 0  # and nothing left reserved
        assert dlq_depth(rt) == 0
        # refused at once, wherever it stood in its invocation's lease: never handed back
        # to wait (behind "fine" it waited a minute for a limit it can never fit)
        assert rt.aws_calls.calls[("sqs", "SendMessage")] == 0
    assert (summary.succeeded, summary.failed, summary.dead_lettered) == (1, 1, 0)
    (error,) = read_jsonl(tmp_path / "out" / "errors.jsonl")
    assert error["custom_id"] == "huge" and error["error"]["code"] == "request_too_large"


def test_a_retry_waits_for_capacity_and_never_burns_a_delivery(tmp_path: Path, config):
    """Every attempt takes rate-limit capacity: after a 429 the retry waits for the next
    spaced send (seconds at 12/min, halved by the 429), longer than the worker waits in
    process, so the job is handed back throttled. With one delivery allowed, a retry
    counted as a failure would dead-letter it; instead it is answered, sent twice in all,
    the two sends a spacing apart."""
    path = write(tmp_path, [json.dumps({"custom_id": "r0", "prompt": "hello", "max_tokens": 8})])
    base = config.model_copy(
        update={
            "worker": config.worker.model_copy(
                update={"max_receive_count": 1, "max_throttle_wait_s": 1}
            ),
            "retries": config.retries.model_copy(update={"base_s": 0.05, "max_backoff_s": 0.1}),
        }
    )
    cfg = tmp_path / "chatbatch.json"
    cfg.write_text(base.model_dump_json())
    with runtime(config_path=cfg, rpm=12, timeout_s=90) as rt:
        assert rt.simulator is not None
        rt.simulator.inject("429")  # the first request: refused, no rate-limit headers
        summary = rt.run(path, tmp_path / "out")
        assert (summary.succeeded, summary.dead_lettered, summary.failed) == (1, 0, 0)
        stats = rt.simulator.stats()
        assert stats.by_status == {"429": 1, "200": 1}
        first, retry = stats.received_s
        assert retry - first >= 4.0  # the next spaced send (5 s at 12/min), not the 0.1 s backoff
        assert ledger_spent(rt) > 0


def test_the_aws_calls_of_a_batchs_ten_jobs_run_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Each job's own write (its answer into the response cache: the results are written
    once for all, ``worker/finals.py``) waits until all ten are writing. With too few
    threads (asyncio's default: 6 on two cores) the waiting writes hold them all, the
    other jobs' calls (their grant, their arm) queue behind, and the barrier breaks: a
    job's time-critical call must never wait for its neighbours' slow ones."""
    barrier = threading.Barrier(10, timeout=20)
    put = Store.put_cached
    pools: set[int] = set()

    def together(self: Store, *args: Any, **kwargs: Any) -> Any:
        pools.add(self._s3.meta.config.max_pool_connections)  # type: ignore[attr-defined]
        barrier.wait()
        return put(self, *args, **kwargs)

    monkeypatch.setattr(Store, "put_cached", together)
    lines = [
        json.dumps({"custom_id": f"t{i}", "prompt": f"q{i}", "cache": True}) for i in range(10)
    ]
    with runtime(concurrency=2, rpm=6000) as rt:
        summary = rt.run(write(tmp_path, lines), tmp_path / "out")
    assert not barrier.broken
    assert summary.succeeded == 10
    # and the worker's clients keep a connection for each of those threads (boto3: 10)
    assert pools == {services.io_threads(rt.config)}
