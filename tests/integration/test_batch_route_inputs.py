"""The batch route against what a data engineer really sends (`--route batch`): the
promises of docs/batch-route.md checked through the local runtime for each kind of line
(``n`` > 1, tools, a JSON schema, images, no cap, huge and tiny prompts, a claim check,
metadata), for lines the provider answers badly (no usage, a refusal, a whole batch
failed), for duplicates, two models, many batches, a batch's own budget, and midnight.

The promises, checked by ``promised``: every job ends exactly once, with its own answer or
an error naming it; each cost record says route ``batch`` and is priced at the batch
prices; the ledger's spent equals the cost records and what the simulator billed at each
route's prices; nothing stays reserved or ``batched``.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from clocks import ShiftedClock
from test_batch_route import MODEL, books, options, rt_parts
from test_batch_route import job as plain_job

from bench._common import read_jsonl
from chatbatch.batchroute import gather, handler
from chatbatch.client.deployment import connect
from chatbatch.client.retry import RetryPlan, plan_retry
from chatbatch.core.config import Model
from chatbatch.core.days import next_midnight, utc_day
from chatbatch.core.pricing import Usage, cost, from_nanos
from chatbatch.local.options import LocalOptions
from chatbatch.local.runtime import LocalRuntime
from chatbatch.local.simulator import Stats
from chatbatch.local.summary import Summary
from chatbatch.state.batches import BatchInfo
from chatbatch.state.budget.budget import Budget
from chatbatch.state.budget.ledger import DayUsage
from chatbatch.state.budget.pause import BudgetPause
from chatbatch.state.parts import Parts
from chatbatch.worker import services


@dataclass
class Ran:
    """What a run through the batch route left: its summary, output files and books."""

    summary: Summary
    results: dict[str, dict[str, Any]]
    costs: list[dict[str, Any]]
    errors: dict[str, dict[str, Any]]
    usage: DayUsage
    billed: Decimal
    info: BatchInfo
    stats: Stats
    model: Model  # MODEL at its batch prices
    sync_model: Model
    after: Any = None


def through(
    tmp_path: Path,
    lines: list[dict[str, Any]],
    opts: LocalOptions | None = None,
    before: Callable[[LocalRuntime], None] | None = None,
    after: Callable[[LocalRuntime, Summary], Any] | None = None,
) -> Ran:
    """``lines`` as one file through ``local run --route batch``; ``before`` and ``after``
    the run, in the runtime (``after``'s answer is ``Ran.after``)."""
    path = tmp_path / "jobs.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "out"
    with LocalRuntime(opts or options()) as rt:
        if before is not None:
            before(rt)
        summary = rt.run(path, out, route="batch")
        usage, billed = books(rt)
        info = rt.batches.get(summary.batch_id)
        assert rt.simulator is not None and info is not None
        stats = rt.simulator.stats()
        model = next(m for m in rt.config.models.values() if m.model_id == MODEL)
        later = after(rt, summary) if after is not None else None
    return Ran(
        summary=summary,
        results={r["custom_id"]: r for r in read_jsonl(out / "results.jsonl")},
        costs=read_jsonl(out / "costs.jsonl") if (out / "costs.jsonl").exists() else [],
        errors={e["custom_id"]: e for e in read_jsonl(out / "errors.jsonl")}
        if (out / "errors.jsonl").exists()
        else {},
        usage=usage,
        billed=billed,
        info=info,
        stats=stats,
        model=model.batch_priced(),
        sync_model=model,
        after=later,
    )


def options_with(config_path: Path) -> LocalOptions:
    return dataclasses.replace(options(), config_path=config_path)


def answer_of(result: dict[str, Any], choice: int = 0) -> str:
    return str(result["response"]["body"]["choices"][choice]["message"]["content"] or "")


def promised(
    ran: Ran, ids: set[str], *, sync: frozenset[str] = frozenset(), exact_bill: bool = True
) -> None:
    """The batch route's promises for a run whose jobs are ``ids``; ``sync``: the jobs its
    provider batch sent back to the synchronous path; ``exact_bill``: every answer came
    with usage (else the ledger books a worst case above the bill)."""
    assert set(ran.results).isdisjoint(ran.errors), set(ran.results) & set(ran.errors)
    assert set(ran.results) | set(ran.errors) == ids
    answered = {c for c, r in ran.results.items() if r["response"]["status_code"] == 200}
    refused = set(ran.results) - answered  # the provider's HTTP answer, as synchronously
    assert (ran.summary.succeeded, ran.summary.failed) == (len(answered), len(ids - answered))
    for error in ran.errors.values():
        assert error["error"]["message"], error
    for cid in refused:  # the line a synchronous refusal gets: its facts, at no cost
        facts = ran.results[cid]["chatbatch"]
        assert facts is not None and Decimal(facts["cost_usd"]) == 0, ran.results[cid]
    records = {}
    for record in ran.costs:
        assert record["custom_id"] not in records, ("a cost counted twice", record)
        records[record["custom_id"]] = record
    assert set(records) == answered
    for record in ran.costs:
        assert record["route"] == ("sync" if record["custom_id"] in sync else "batch"), record
        if record["usage_estimated"]:
            continue
        usage = Usage(
            prompt_tokens=record["prompt_tokens"],
            cached_tokens=record["cached_tokens"],
            completion_tokens=record["completion_tokens"],
        )
        prices = ran.sync_model if record["route"] == "sync" else ran.model
        assert Decimal(record["cost_usd"]) == cost(usage, prices), record
    from_records = sum((Decimal(c["cost_usd"]) for c in ran.costs), Decimal(0))
    assert ran.usage.spent_usd == from_records, (ran.usage, from_records)
    if exact_bill:
        assert from_records == ran.billed, (from_records, ran.billed)
    else:
        assert from_records >= ran.billed
    assert ran.usage.reserved_usd == 0, ran.usage
    assert ran.info.batched == 0 and ran.info.deferred == 0, ran.info
    synchronous = ran.stats.billed_by_model.get(MODEL)
    assert (synchronous.calls if synchronous else 0) == len(sync & answered)


def body_job(i: int, **body: Any) -> dict[str, Any]:
    """A job line of ``plain_job``'s shape with ``body`` merged over its body."""
    line = plain_job(i, batch=True)
    line["body"] = {**line["body"], **body}
    return line


def without(line: dict[str, Any], key: str) -> dict[str, Any]:
    line["body"] = {k: v for k, v in line["body"].items() if k != key}
    return line


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": "look a word up",
            "parameters": {
                "type": "object",
                "properties": {"word": {"type": "string"}},
                "required": ["word"],
            },
        },
    }
]
SCHEMA = {
    "type": "json_schema",
    "json_schema": {
        "name": "label",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {"label": {"type": "string"}},
            "required": ["label"],
            "additionalProperties": False,
        },
    },
}
IMAGE = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}


def realistic() -> list[dict[str, Any]]:
    """One of each kind of line a data engineer sends through the batch route."""
    huge = "word9 " + "lorem ipsum dolor sit amet " * 11_000  # ~300 KB: a claim check
    return [
        plain_job(0, batch=True),
        body_job(1, n=3),
        body_job(2, tools=TOOLS, tool_choice="auto"),
        body_job(3, response_format=SCHEMA),
        body_job(
            4,
            messages=[
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "word4 what is this"}, IMAGE],
                }
            ],
        ),
        without(plain_job(5, batch=True), "max_tokens"),
        body_job(6, messages=[{"role": "user", "content": "word6"}], max_tokens=4),
        body_job(
            7,
            messages=[
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "word7 first"},
                {"role": "assistant", "content": "ok"},
                {"role": "user", "content": "word7 again"},
            ],
        ),
        {**plain_job(8, batch=True), "metadata": {"team": "search", "run": "r8"}},
        body_job(9, messages=[{"role": "user", "content": huge}]),
    ]


def test_every_kind_of_line_ends_once_with_its_own_answer_at_the_batch_prices(
    tmp_path: Path,
) -> None:
    lines = realistic()
    ran = through(tmp_path, lines)
    ids = {line["custom_id"] for line in lines}
    promised(ran, ids)
    assert not ran.errors, ran.errors
    for i in range(10):
        assert f"word{i}" in answer_of(ran.results[f"job-{i}"]), i
    three = ran.results["job-1"]["response"]["body"]["choices"]
    assert len(three) == 3 and len({c["message"]["content"] for c in three}) == 3
    assert ran.stats.batch_billed_by_model[MODEL].calls == len(lines)
    by_id = {c["custom_id"]: c for c in ran.costs}
    assert by_id["job-8"]["metadata"] == {"team": "search", "run": "r8"}
    assert by_id["job-0"]["metadata"] == {}


def test_a_line_without_usage_is_booked_at_its_worst_case_a_refused_one_fails_once(
    tmp_path: Path,
) -> None:
    """Inside one provider batch: an answer without usage (booked at its batch worst case,
    as the synchronous path books one), a line refused (400: fails ``provider_400``, for
    good), a line with a 500 (goes back to the synchronous path, answered there once)."""
    lines = [plain_job(i, batch=True) for i in range(6)]

    def faults(rt: LocalRuntime) -> None:
        assert rt.simulator is not None
        rt.simulator.inject_batch("no_usage", "400", "500")  # lines 0, 1, 2 of the file

    def retry_plan(rt: LocalRuntime, summary: Summary) -> RetryPlan:
        """What `chatbatch retry` would send again."""
        rt.register_stack()
        deployment = connect(rt.config)
        info = rt.batches.get(summary.batch_id)
        assert info is not None
        return plan_retry(deployment, info)

    ran = through(tmp_path, lines, before=faults, after=retry_plan)
    promised(ran, {f"job-{i}" for i in range(6)}, sync=frozenset({"job-2"}), exact_bill=False)
    assert not ran.errors and ran.results["job-1"]["response"]["status_code"] == 400
    # a refused job can be sent again, as a synchronous one can
    plan: RetryPlan = ran.after
    assert [j.custom_id for j in plan.jobs] == ["job-1"], plan
    assert plan.by_code == {"provider_400": 1} and plan.not_retriable == 0, plan
    estimated = [c for c in ran.costs if c["usage_estimated"]]
    assert [c["custom_id"] for c in estimated] == ["job-0"], estimated
    assert ran.results["job-0"]["chatbatch"]["usage_estimated"]
    worst = plain_job_worst(ran, 0)
    assert Decimal(estimated[0]["cost_usd"]) == worst
    # the rest booked exactly: only the estimate is above the bill
    assert ran.usage.spent_usd - worst < ran.billed < ran.usage.spent_usd
    assert ran.info.estimated_calls == 1 and ran.summary.estimated_calls == 1
    for i in (0, 2, 3, 4, 5):
        assert f"word{i}" in answer_of(ran.results[f"job-{i}"]), i


def plain_job_worst(ran: Ran, i: int) -> Decimal:
    """``plain_job(i)``'s worst case at the batch prices, by the test's own arithmetic:
    its prompt bound is the tokenizer's business, so it is read back from its record."""
    record = next(c for c in ran.costs if c["custom_id"] == f"job-{i}")
    usage = Usage(
        prompt_tokens=record["prompt_tokens"],
        cached_tokens=record["cached_tokens"],
        completion_tokens=record["completion_tokens"],
    )
    assert record["completion_tokens"] == 40  # its max_tokens: the most it could write
    return cost(usage, ran.model)


def test_a_provider_batch_that_fails_part_way_sends_its_unrun_lines_to_sync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The provider fails the whole batch half-way (``POST /admin/batches/{id}/fail``): the
    lines answered before are batch results; the others run synchronously, each once."""
    fail: list[Callable[[str], None]] = []
    opened = Parts.opened

    def opened_then_failed(self: Parts, part_id: str, provider_batch_id: str) -> bool:
        done = opened(self, part_id, provider_batch_id)
        threading.Timer(2.0, fail[0], args=(provider_batch_id,)).start()
        return done

    monkeypatch.setattr(Parts, "opened", opened_then_failed)

    def failer(rt: LocalRuntime) -> None:
        assert rt.simulator is not None
        url, key = rt.simulator.url, rt.simulator.settings.api_key
        auth = {"authorization": f"Bearer {key}"} if key else {}

        def post(batch_id: str) -> None:
            httpx.post(f"{url}/admin/batches/{batch_id}/fail", headers=auth).raise_for_status()

        fail.append(post)

    lines = [plain_job(i, batch=True) for i in range(20)]
    ran = through(tmp_path, lines, options(batch_turnaround_s=4.0), before=failer)
    routes = {c["custom_id"]: c["route"] for c in ran.costs}
    sync = frozenset(c for c, r in routes.items() if r == "sync")
    assert 2 <= len(sync) <= 18, routes  # failed part-way
    promised(ran, {f"job-{i}" for i in range(20)}, sync=sync)
    assert not ran.errors
    assert ran.stats.batch_billed_by_model[MODEL].calls == 20 - len(sync)


def test_a_part_reserved_before_midnight_and_ingested_after_books_on_its_day(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The part reserves on day D (ten minutes before UTC midnight); the clocks (the
    budget's and the gatherer's) pass midnight while its provider batch runs. Its cost
    records and results say day D, day D's ledger books them and holds nothing; the job
    its provider batch sent back (a 500) runs synchronously on D+1, booked there."""
    clock = ShiftedClock()
    monkeypatch.setattr(services, "Budget", partial(Budget, clock=clock))
    monkeypatch.setattr(services, "BudgetPause", partial(BudgetPause, clock=clock))
    monkeypatch.setattr(handler, "CLOCK", clock)
    midnight = next_midnight(time.time() + 3 * 86_400).timestamp()
    day, next_day = utc_day(midnight - 1), utc_day(midnight + 1)
    clock.at(midnight - 600)
    opened = Parts.opened

    def opened_then_midnight(self: Parts, part_id: str, provider_batch_id: str) -> bool:
        clock.at(midnight + 60)
        return opened(self, part_id, provider_batch_id)

    monkeypatch.setattr(Parts, "opened", opened_then_midnight)

    def fault(rt: LocalRuntime) -> None:
        assert rt.simulator is not None
        rt.simulator.inject_batch("500")

    def both_days(rt: LocalRuntime, summary: Summary) -> list[DayUsage]:
        budget = Budget(boto3.client("dynamodb"), rt.resources.table, rt.config)
        return [budget.usage(day), budget.usage(next_day)]

    ran = through(
        tmp_path, [plain_job(i, batch=True) for i in range(6)], before=fault, after=both_days
    )
    on_d, on_next = ran.after
    both = DayUsage(
        day=day,
        limit_usd=on_d.limit_usd,
        spent_usd=on_d.spent_usd + on_next.spent_usd,
        reserved_usd=on_d.reserved_usd + on_next.reserved_usd,
    )
    promised(
        dataclasses.replace(ran, usage=both),
        {f"job-{i}" for i in range(6)},
        sync=frozenset({"job-0"}),
    )
    # (the synchronous job's record takes the worker's own clock, not moved here: not checked)
    days = {c["custom_id"]: (c["route"], c["dt"]) for c in ran.costs if c["custom_id"] != "job-0"}
    assert days == {f"job-{i}": ("batch", day) for i in range(1, 6)}, days
    assert {r["chatbatch"]["day"] for c, r in ran.results.items() if c != "job-0"} == {day}
    batch_spent = sum(Decimal(c["cost_usd"]) for c in ran.costs if c["route"] == "batch")
    assert on_d.spent_usd == batch_spent and on_d.reserved_usd == 0, on_d
    assert on_next.spent_usd == Decimal(ran.results["job-0"]["chatbatch"]["cost_usd"]), on_next


def test_a_batch_whose_own_limit_holds_some_of_its_jobs_runs_those(tmp_path: Path) -> None:
    """``budget.batch_usd`` holds two of six jobs' worst cases ($0.000283 each at the
    batch prices): as synchronously, jobs that fit run (the part halved until it fits: one
    here) and the rest wait ``deferred`` (sent again in ``LATER_S``, after the run has
    ended), and the batch never spends past its limit."""
    data = tomllib.loads(Path("chatbatch.toml").read_text())
    data["budget"]["batch_usd"] = 0.0006
    config_path = tmp_path / "chatbatch.json"
    config_path.write_text(json.dumps(data, default=str))
    ran = through(tmp_path, [plain_job(i, batch=True) for i in range(6)], options_with(config_path))
    assert ran.usage.spent_usd <= Decimal("0.0006") and ran.usage.reserved_usd == 0
    assert 1 <= ran.summary.succeeded < 6 and ran.summary.deferred == 6 - ran.summary.succeeded


def held_gatherer(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """The gatherer gathers nothing until the event is set (its other steps go on)."""
    hold = threading.Event()
    gather_now = handler.Gatherer.gather

    def held_back(self: gather.Gatherer, parts: Any) -> gather.Gathered:
        return gather_now(self, parts) if hold.is_set() else gather.Gathered()

    monkeypatch.setattr(handler.Gatherer, "gather", held_back)
    return hold


def test_more_batches_waiting_than_one_part_holds_split_each_job_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """45 batches wait on the batch queue at once (the gatherer held back until all are
    sent): they go out in two provider batches (at most 40 batches a part), every job
    once, each batch's cost its jobs' at the batch prices, the books exact."""
    hold = held_gatherer(monkeypatch)
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps(plain_job(0, batch=True)) + "\n")
    with LocalRuntime(options()) as rt:
        plans = [rt.submit(path, batch_id=f"many-{k:02d}", route="batch") for k in range(45)]
        hold.set()
        infos = [rt.wait(plan) for plan in plans]
        usage, billed = books(rt)
        parts = list(rt_parts(rt).listed())
        assert rt.simulator is not None
        stats = rt.simulator.stats()
    assert sorted(p.jobs for p in parts) == [5, 40], parts
    assert all((i.succeeded, i.batched, i.failed) == (1, 0, 0) for i in infos), infos
    assert stats.batch_billed_by_model[MODEL].calls == 45 and MODEL not in stats.billed_by_model
    assert usage.spent_usd == billed == sum(from_nanos(i.cost_nanos) for i in infos)
    assert usage.reserved_usd == 0, usage


def test_a_file_sent_twice_runs_each_job_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same file submitted twice into one batch before the gatherer looks (both copies
    of each job on the batch queue), then a third time once it is done: each job is
    billed, answered and booked once."""
    hold = held_gatherer(monkeypatch)
    path = tmp_path / "jobs.jsonl"
    path.write_text("".join(json.dumps(plain_job(i, batch=True)) + "\n" for i in range(6)))
    with LocalRuntime(options()) as rt:
        plan = rt.submit(path, route="batch")
        rt.submit(path, route="batch")
        hold.set()
        rt.wait(plan)
        rt.submit(path, route="batch")
        time.sleep(3)  # three more passes of the gatherer: the late copies dropped
        info = rt.wait(plan)
        usage, billed = books(rt)
        assert rt.simulator is not None
        stats = rt.simulator.stats()
    assert (info.succeeded, info.batched, info.failed) == (6, 0, 0), info
    assert stats.batch_billed_by_model[MODEL].calls == 6 and MODEL not in stats.billed_by_model
    assert usage.spent_usd == billed == from_nanos(info.cost_nanos)
    assert usage.reserved_usd == 0, usage
