"""The batch route end to end through the local runtime: the gatherer on its timer, the
simulator's batch APIs with a turnaround of seconds (docs/batch-route.md).

A mixed file: the jobs whose deadline allows it go through OpenAI's Batch API at the batch
prices, the rest synchronously; every job's answer is its own, each cost record says its
route and is priced at that route's prices, and the ledger equals what the simulator
billed, each call at its own prices.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import pytest
from test_books import _priced as priced  # a simulator bill at a model's prices
from test_events import drain, event_sink, received, wait_for
from typer.testing import CliRunner

from bench._common import read_jsonl
from chatbatch.batchroute import gather, handler
from chatbatch.cli.app import app
from chatbatch.client.budget import set_daily_limit
from chatbatch.client.deployment import connect
from chatbatch.core.events import BatchCompleted
from chatbatch.core.pricing import Usage, cost, from_nanos
from chatbatch.local.options import LocalOptions
from chatbatch.local.runtime import LocalRuntime
from chatbatch.local.simulator import SimulatorSettings
from chatbatch.provider.batch_api import BatchApiError, BatchPart, OpenAIBatchClient
from chatbatch.state.batches import Batches
from chatbatch.state.budget.budget import Budget
from chatbatch.state.budget.ledger import DayUsage
from chatbatch.state.parts import Parts, PartState
from tests.unit.test_anthropic_config import anthropic_config

MODEL = "gpt-4.1"  # batch_api = "openai" in the shipped config


def job(i: int, batch: bool, **extra: Any) -> dict[str, Any]:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"word{i} please answer"}],
        "max_tokens": 40,
    }
    line = {"custom_id": f"job-{i}", "method": "POST", "url": "/v1/chat/completions"}
    return {**line, "body": body, **({"deadline_h": 24} if batch else {}), **extra}


def write(tmp_path: Path, lines: list[dict[str, Any]]) -> Path:
    path = tmp_path / "jobs.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def options(**settings: Any) -> LocalOptions:
    sim = SimulatorSettings(**{"batch_turnaround_s": 2.0, **settings})
    return LocalOptions(timeout_s=120, gather_every_s=1.0, simulator=sim)


def rt_parts(rt: LocalRuntime) -> Parts:
    ddb = boto3.client("dynamodb")
    return Parts(ddb, rt.resources.table, Batches(ddb, rt.resources.table))


def books(rt: LocalRuntime) -> tuple[DayUsage, Decimal]:
    """The day's ledger, and what the simulator billed, each call at its route's prices."""
    assert rt.simulator is not None
    stats = rt.simulator.stats()
    model = next(m for m in rt.config.models.values() if m.model_id == MODEL)
    sync, batch = stats.billed_by_model.get(MODEL), stats.batch_billed_by_model.get(MODEL)
    billed = priced(sync.model_dump(), model) if sync else Decimal(0)
    billed += priced(batch.model_dump(), model.batch_priced()) if batch else Decimal(0)
    return Budget(boto3.client("dynamodb"), rt.resources.table, rt.config).usage(), billed


def test_a_mixed_file_goes_part_sync_part_batch_each_answer_its_own_and_the_books_exact(
    tmp_path: Path,
) -> None:
    lines = [job(i, batch=i % 3 != 0) for i in range(30)]  # 20 batch, 10 sync
    path = write(tmp_path, lines)
    out = tmp_path / "out"
    with LocalRuntime(options()) as rt:
        assert rt.simulator is not None
        summary = rt.run(path, out)
        stats = rt.simulator.stats()
        spent = Budget(boto3.client("dynamodb"), rt.resources.table, rt.config).usage().spent_usd
        info = rt.batches.get(summary.batch_id)
        model = next(m for m in rt.config.models.values() if m.model_id == MODEL)
    assert summary.succeeded == 30 and summary.failed == 0, summary
    assert info is not None and info.batched == 0 and info.succeeded == 30
    # only the synchronous jobs were called synchronously
    assert stats.billed_by_model[MODEL].calls == 10
    assert stats.batch_billed_by_model[MODEL].calls == 20

    results = {r["custom_id"]: r for r in read_jsonl(out / "results.jsonl")}
    assert sorted(results) == sorted(line["custom_id"] for line in lines)
    for i in range(30):
        content = results[f"job-{i}"]["response"]["body"]["choices"][0]["message"]["content"]
        assert f"word{i} " in content + " ", (i, content)

    costs = {c["custom_id"]: c for c in read_jsonl(out / "costs.jsonl")}
    for i in range(30):
        record = costs[f"job-{i}"]
        route = "sync" if i % 3 == 0 else "batch"
        assert record["route"] == route, record
        usage = Usage(
            prompt_tokens=record["prompt_tokens"],
            cached_tokens=record["cached_tokens"],
            completion_tokens=record["completion_tokens"],
        )
        prices = model if route == "sync" else model.batch_priced()
        assert Decimal(record["cost_usd"]) == cost(usage, prices), record
    billed = priced(stats.billed_by_model[MODEL].model_dump(), model) + priced(
        stats.batch_billed_by_model[MODEL].model_dump(), model.batch_priced()
    )
    assert spent == billed
    assert from_nanos(info.cost_nanos) == billed


def test_lines_a_provider_batch_expired_go_back_to_sync_while_their_deadline_allows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The provider batch expires half-way: the lines it answered are batch results; the
    gatherer's clock then stands 23.5 hours after the batch was made (as when a real batch
    expires at 24 h), so of the expired lines a job with 48 hours runs synchronously and a
    job with 24 fails ``batch_expired``, unbilled. The ledger still equals the bill and
    nothing stays reserved."""
    later = {"s": 0.0}
    monkeypatch.setattr(handler, "CLOCK", lambda: time.time() + later["s"])
    opened = Parts.opened

    def opened_then_a_day_passes(self: Parts, part_id: str, provider_batch_id: str) -> bool:
        later["s"] = 23.5 * 3600
        return opened(self, part_id, provider_batch_id)

    monkeypatch.setattr(Parts, "opened", opened_then_a_day_passes)
    lines = [job(i, batch=True, deadline_h=48 if i % 2 else 24) for i in range(20)]
    path = write(tmp_path, lines)
    out = tmp_path / "out"
    with LocalRuntime(options(batch_turnaround_s=4.0, batch_expire_after_s=2.0)) as rt:
        summary = rt.run(path, out)
        usage, billed = books(rt)
        info = rt.batches.get(summary.batch_id)
    routes = {c["custom_id"]: c["route"] for c in read_jsonl(out / "costs.jsonl")}
    errors = {e["custom_id"]: e["error"] for e in read_jsonl(out / "errors.jsonl")}
    expired = {f"job-{i}" for i in range(20)} - {c for c, r in routes.items() if r == "batch"}
    assert 4 <= len(expired) <= 16, routes  # part answered, part expired
    for cid in sorted(expired):
        if int(cid.split("-")[1]) % 2:  # 48 h: run synchronously
            assert routes[cid] == "sync" and cid not in errors, cid
        else:
            assert cid not in routes and errors[cid]["code"] == "batch_expired", cid
            assert "deadline_h 24" in errors[cid]["message"]
    assert (summary.succeeded, summary.failed) == (20 - len(errors), len(errors)), summary
    assert errors and info is not None and info.batched == 0
    assert usage.spent_usd == billed and usage.reserved_usd == 0, usage


def test_cancel_mid_batch_cancels_the_provider_batch_and_settles_what_it_answered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``chatbatch cancel`` while the provider batch runs: the gatherer cancels it there;
    the lines answered before are results, billed at the batch prices and settled; the
    rest are ``cancelled`` with ``batch_cancelled``, never run synchronously. The ledger
    equals the bill and nothing stays reserved."""
    cancel: list[Callable[[], None]] = []
    opened = Parts.opened

    def opened_then_cancelled(self: Parts, part_id: str, provider_batch_id: str) -> bool:
        done = opened(self, part_id, provider_batch_id)
        threading.Timer(2.0, cancel[0]).start()  # half-way through its 4 s
        return done

    monkeypatch.setattr(Parts, "opened", opened_then_cancelled)
    path = write(tmp_path, [job(i, batch=True) for i in range(20)])
    out = tmp_path / "out"
    with LocalRuntime(options(batch_turnaround_s=4.0)) as rt:
        cancel.append(lambda: rt.batches.cancel("local"))
        summary = rt.run(path, out)
        usage, billed = books(rt)
        info = rt.batches.get(summary.batch_id)
        assert rt.simulator is not None
        stats = rt.simulator.stats()
    answered = {r["custom_id"] for r in read_jsonl(out / "results.jsonl")}
    errors = {e["custom_id"]: e["error"]["code"] for e in read_jsonl(out / "errors.jsonl")}
    assert 2 <= len(answered) <= 18, answered  # cancelled part-way
    assert set(errors.values()) == {"batch_cancelled"}
    assert answered | set(errors) == {f"job-{i}" for i in range(20)}
    assert MODEL not in stats.billed_by_model  # nothing ran synchronously
    assert stats.batch_billed_by_model[MODEL].calls == len(answered)
    assert info is not None and (info.succeeded, info.cancelled_jobs) == (
        len(answered),
        len(errors),
    )
    assert info.batched == 0
    assert usage.spent_usd == billed and usage.reserved_usd == 0, usage


def test_a_batch_whose_last_jobs_the_gatherer_ingests_is_announced_once(tmp_path: Path) -> None:
    """Every job through the batch route: no worker ends any, so the Batch Completed
    event is the gatherer's, with the batch's counts and cost, once."""
    path = write(tmp_path, [job(i, batch=True) for i in range(6)])
    with LocalRuntime(options()) as rt:
        sink = event_sink()
        summary = rt.run(path, tmp_path / "out")
        events: list[dict[str, Any]] = []
        wait_for(lambda: received(sink, events, 1), 30, "the Batch Completed event")
        time.sleep(2.5)  # two more passes of the gatherer: no second event
        events += drain(sink)
        usage, billed = books(rt)
    assert summary.succeeded == 6
    (event,) = events
    detail = BatchCompleted.model_validate(event["detail"])
    assert (detail.batch_id, detail.total, detail.succeeded) == ("local", 6, 6)
    assert detail.cost_usd == usage.spent_usd == billed


def test_jobs_on_an_anthropic_model_go_through_message_batches(tmp_path: Path) -> None:
    """A kind anthropic model with ``batch_api = "anthropic"``: a file of Anthropic lines
    goes through the simulator's Message Batches, each answer its own, at the batch
    prices, the ledger equal to the bill."""
    prices = {"batch_input_per_m": 0.5, "batch_cached_input_per_m": 0.05}
    data = anthropic_config(batch_api="anthropic", batch_output_per_m=2.5, **prices)
    config_path = tmp_path / "chatbatch.json"
    config_path.write_text(json.dumps(data, default=str))
    lines = [
        {
            "custom_id": f"native-{i}",
            "deadline_h": 24,
            "params": {
                "model": "haiku",
                "max_tokens": 40,
                "messages": [{"role": "user", "content": f"word{i} please answer"}],
            },
        }
        for i in range(6)
    ]
    path = write(tmp_path, lines)
    out = tmp_path / "out"
    opts = options(models=["claude-haiku-4-5"])
    with LocalRuntime(dataclasses.replace(opts, config_path=config_path)) as rt:
        summary = rt.run(path, out)
        assert rt.simulator is not None
        stats = rt.simulator.stats()
        model = rt.config.models["haiku"]
        spent = Budget(boto3.client("dynamodb"), rt.resources.table, rt.config).usage().spent_usd
    assert summary.succeeded == 6 and summary.failed == 0, summary
    assert "claude-haiku-4-5" not in stats.billed_by_model  # nothing synchronous
    bill = stats.batch_billed_by_model["claude-haiku-4-5"]
    assert bill.calls == 6
    assert spent == priced(bill.model_dump(), model.batch_priced())
    results = {r["custom_id"]: r for r in read_jsonl(out / "results.jsonl")}
    for i in range(6):  # Anthropic's result shape, each its own answer
        result = results[f"native-{i}"]["result"]
        assert result["type"] == "succeeded", result
        assert f"word{i} " in result["message"]["content"][0]["text"] + " "
    costs = read_jsonl(out / "costs.jsonl")
    assert {c["route"] for c in costs} == {"batch"} and len(costs) == 6


def test_a_part_the_provider_never_takes_goes_to_sync_after_an_hour(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The provider refuses every batch create (a 400): the part stays ``creating`` and
    each pass tries again; once the gatherer's clock is an hour on, its jobs run
    synchronously, its money is given back, and no job is lost or run twice."""
    later = {"s": 0.0}
    tries: list[float] = []
    monkeypatch.setattr(handler, "CLOCK", lambda: time.time() + later["s"])

    def refused(self: OpenAIBatchClient, part: BatchPart, metadata: Any = None) -> Any:
        tries.append(time.time())
        if len(tries) == 2:  # the next pass's clock is past the hour
            later["s"] = 3700.0
        raise BatchApiError("POST /batches: 400 the file is not accepted", status=400)

    monkeypatch.setattr(OpenAIBatchClient, "create", refused)
    path = write(tmp_path, [job(i, batch=True) for i in range(8)])
    out = tmp_path / "out"
    with LocalRuntime(options()) as rt:
        summary = rt.run(path, out)
        usage, billed = books(rt)
        info = rt.batches.get(summary.batch_id)
        assert rt.simulator is not None
        stats = rt.simulator.stats()
        parts = list(rt_parts(rt).listed())
    assert len(tries) == 2, tries
    assert summary.succeeded == 8, summary
    assert stats.billed_by_model[MODEL].calls == 8 and MODEL not in stats.batch_billed_by_model
    assert {c["route"] for c in read_jsonl(out / "costs.jsonl")} == {"sync"}
    assert info is not None and info.batched == 0
    assert [p.state for p in parts] == [PartState.done]
    assert usage.spent_usd == billed and usage.reserved_usd == 0, usage


def test_a_provider_batch_the_provider_no_longer_knows_runs_its_jobs_synchronously(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The provider answers 404 for the part's batch (a local run resumed with a new
    simulator, a key of another account): its jobs did not run there, so they run
    synchronously, each once, and the part's money goes back."""

    def gone(self: OpenAIBatchClient, batch_id: str) -> Any:
        raise BatchApiError(f"GET /batches/{batch_id}: 404 not found", status=404)

    monkeypatch.setattr(OpenAIBatchClient, "poll", gone)
    path = write(tmp_path, [job(i, batch=True, deadline_h=48) for i in range(6)])
    with LocalRuntime(options()) as rt:
        summary = rt.run(path, tmp_path / "out")
        usage, _ = books(rt)
        assert rt.simulator is not None
        stats = rt.simulator.stats()
        model = next(m for m in rt.config.models.values() if m.model_id == MODEL)
    assert summary.succeeded == 6, summary
    assert stats.billed_by_model[MODEL].calls == 6
    # (this simulator did run the batch it was told to forget: its batch bill is not ours)
    sync_bill = priced(stats.billed_by_model[MODEL].model_dump(), model)
    assert usage.spent_usd == sync_bill and usage.reserved_usd == 0, usage


def test_a_part_the_budget_cannot_hold_waits_deferred_then_goes_when_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The day's budget has no room for the part's worst case: nothing is sent to the
    provider, the jobs wait ``deferred`` (the run ends saying so) on the batch queue as
    new, delayed messages (no receive counted toward the DLQ); raised, they go through
    the batch API, each once."""
    monkeypatch.setattr(gather, "LATER_S", 1)
    path = write(tmp_path, [job(i, batch=True) for i in range(6)])
    with LocalRuntime(dataclasses.replace(options(), budget_usd=Decimal("0.0001"))) as rt:
        plan = rt.submit(path)
        waiting = rt.wait(plan, until=lambda i, p: i.deferred >= p.valid)
        assert rt.simulator is not None
        assert (waiting.deferred, waiting.succeeded) == (6, 0), waiting
        assert MODEL not in rt.simulator.stats().batch_billed_by_model
        rt.register_stack()
        set_daily_limit(connect(rt.config), Decimal(5))
        info = rt.wait(plan, until=lambda i, p: i.finished >= p.valid)
        usage, billed = books(rt)
        stats = rt.simulator.stats()
        dlq = boto3.client("sqs").get_queue_attributes(
            QueueUrl=rt.resources.batch_dlq or "", AttributeNames=["ApproximateNumberOfMessages"]
        )
    assert info.succeeded == 6 and info.deferred == 0 and info.batched == 0
    assert stats.batch_billed_by_model[MODEL].calls == 6
    assert int(dlq["Attributes"]["ApproximateNumberOfMessages"]) == 0
    assert usage.spent_usd == billed and usage.reserved_usd == 0, usage


def test_local_run_route_batch_through_the_cli(tmp_path: Path) -> None:
    """``chatbatch local run --route batch``: every job through the simulator's Batch API,
    at the batch prices, on the gatherer's and the simulator's timings given."""
    path = write(tmp_path, [job(i, batch=False) for i in range(4)])  # no deadline of its own
    out = tmp_path / "out"
    args = ["local", "run", str(path), "--out", str(out), "--route", "batch"]
    args += ["--gather-every-s", "0.5", "--sim-batch-turnaround-s", "0.5", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, (result.stdout, result.exception)
    summary = json.loads(result.stdout)
    # provider_calls: the simulator's synchronous requests (none)
    assert (summary["succeeded"], summary["failed"], summary["provider_calls"]) == (4, 0, 0)
    assert {c["route"] for c in read_jsonl(out / "costs.jsonl")} == {"batch"}


def test_redrive_batch_moves_the_batch_dlq_back_and_its_jobs_then_run(tmp_path: Path) -> None:
    """Messages in the batch route's DLQ (the gatherer died holding them
    ``BATCH_MAX_RECEIVES`` times): ``chatbatch redrive --priority batch`` puts them back
    on the batch queue, and the gatherer runs their jobs, each once."""
    path = write(tmp_path, [job(i, batch=True) for i in range(3)])
    hourly = dataclasses.replace(options(), gather_every_s=3600.0)  # gathers when told
    with LocalRuntime(hourly) as rt:
        rt.register_stack()
        plan = rt.submit(path)
        sqs = boto3.client("sqs")
        queue, dlq = rt.resources.batch_queue, rt.resources.batch_dlq
        assert queue and dlq
        moved = 0
        while moved < 3:  # as SQS would dead-letter them
            for m in sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get(
                "Messages", []
            ):
                sqs.send_message(QueueUrl=dlq, MessageBody=m["Body"])
                sqs.delete_message(QueueUrl=queue, ReceiptHandle=m["ReceiptHandle"])
                moved += 1
        result = CliRunner().invoke(app, ["redrive", "--priority", "batch", "--json"])
        assert result.exit_code == 0, (result.stdout, result.exception)
        assert json.loads(result.stdout)["moved"] == {"batch": 3}
        assert rt.gatherer is not None
        deadline = time.monotonic() + 30
        while (info := rt.batches.get(plan.batch_id)) and info.finished < 3:
            assert time.monotonic() < deadline, info
            rt.gatherer.fire()
            time.sleep(0.5)
        usage, billed = books(rt)
    assert info is not None and info.succeeded == 3
    assert usage.spent_usd == billed and usage.reserved_usd == 0
