"""The 64-way budget race through the real worker, on the jobs and answers that broke it.

``tests/unit/test_budget.py`` races 64 threads on the ledger itself. Here 64 emulated
Lambda instances (two jobs per invocation) run the real handler against one daily limit,
on jobs whose worst case is easy to get wrong (no ``max_tokens``: the model's reserve cap
is sent; ``n`` = 2..4; a tools schema; a ``response_format`` JSON schema; streamed or
not), against a simulator that answers every request at the length it allows and damages
a quarter of its answers after billing them (a truncated body or cut stream, a corrupt
body or chunk, a reset after generation, a whole answer without usage).

What must hold: the day ledger's ``committed`` and ``spent`` never pass the limit (sampled
while the run goes on, and at the end), nor does what the simulator billed; the ledger is
the sum of the cost records and the batch's counters; it books at least what the simulator
billed, priced from the config's price table by the money harness
(``bench.bench_money.billed_usd``, never ``chatbatch.core.pricing``), and above that bill
only what it booked at a worst case. The run is checked to have exercised each kind: many
jobs in flight at once, unread answers booked, answers without usage settled at their
worst case, jobs with ``n`` > 1 and open caps answered (at the cap sent), jobs deferred at
the limit. (``test_money.py`` runs each fault mix at the default concurrency.)
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import boto3
import pytest
from moto.core import DEFAULT_ACCOUNT_ID
from moto.sqs.models import sqs_backends

from bench._common import read_jsonl
from bench.bench_money import billed_usd
from chatbatch.core.config import Config, Priority
from chatbatch.core.days import utc_day
from chatbatch.core.job_lines import parse_line
from chatbatch.core.jobs import Job
from chatbatch.core.pricing import to_nanos
from chatbatch.local.options import LocalOptions
from chatbatch.local.runtime import LocalRuntime
from chatbatch.local.simulator import FaultKind, SimulatorSettings, Stats
from chatbatch.local.summary import Summary
from chatbatch.state.batches import BatchInfo
from chatbatch.state.budget.ledger import day_key, layout_key
from chatbatch.worker import handler
from chatbatch.worker.intake import Intake
from chatbatch.worker.invocation import Invocation, Outcome
from tests.unit.prompt_corpus import big_tool

pytestmark = pytest.mark.slow

INSTANCES = 64
JOBS = 96
RESERVE_CAP = 512  # every model's default_max_tokens: the cap an open-cap job is sent
# answered after generation and billed, then damaged or stripped of usage: 25 % together
UNREAD = {
    FaultKind.truncate: 0.07,
    FaultKind.corrupt: 0.06,
    FaultKind.reset_after: 0.06,
    FaultKind.no_usage: 0.06,
}
SEED = 79  # with these rates, each kind comes up 3+ times in the first 34 requests
# every answer runs to the cap it was sent; a request sent none gets the model's own limit
GREEDY = SimulatorSettings(
    answer_tokens=100_000, open_answer_tokens=65_536, stream_chunk_tokens=16, fault_rates=UNREAD
)
TOOL = big_tool(3_000)
SCHEMA = {"name": "records", "schema": big_tool(1_500)["function"]["parameters"]}


def job_line(i: int) -> dict[str, Any]:
    """The ``i``-th job: one of six kinds in turn; its id says whether its cap is open."""
    user = [{"role": "user", "content": f"question {i}: tell me all you know"}]
    match i % 6:
        case 0:  # open cap on the default model
            return {"custom_id": f"open-{i}", "prompt": user[0]["content"], "stream": i % 4 == 0}
        case 1:  # open cap from a role (gpt-4.1), streamed
            return {"custom_id": f"open-{i}", "role": "code", "prompt": f"{i}", "stream": True}
        case 2:  # n choices, each billed at its cap
            body = {"messages": user, "n": 2 + i % 3, "max_tokens": 120, "stream": i % 4 == 0}
            return batch_line(f"capped-{i}", body)
        case 3:  # a tools schema, n = 2, open cap
            body = {"model": "gpt-4.1", "messages": user, "n": 2, "tools": [TOOL]}
            return batch_line(f"open-{i}", body)
        case 4:  # a response_format JSON schema, a message name, n = 3..4
            named = [{"role": "user", "content": f"records {i}", "name": "ana"}]
            schema = {"type": "json_schema", "json_schema": SCHEMA}
            body = {"messages": named, "n": 3 + i % 2, "max_tokens": 80, "response_format": schema}
            return batch_line(f"capped-{i}", body | {"stream": i % 4 == 0})
        case _:  # open cap on a third model, every other one streamed
            line = {"custom_id": f"open-{i}", "model": "gemini-2.5-flash", "prompt": f"{i}"}
            return line | {"stream": i % 2 == 1}


def batch_line(custom_id: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def jobs_in_queues(urls: Iterable[str]) -> Counter[str]:
    """The jobs of every message left in the queues: visible, delayed, or in flight (a
    message whose invocation failed waits out its visibility timeout, its job still
    ``queued``), read from moto's own store: a receive cannot see the ones in flight."""
    backend = sqs_backends[DEFAULT_ACCOUNT_ID][boto3.session.Session().region_name]
    jobs: Counter[str] = Counter()
    for url in urls:
        for message in backend.queues[url.rsplit("/", 1)[1]]._messages:
            jobs[json.loads(message.body)["custom_id"]] += 1
    return jobs


def race_config(config: Config) -> Config:
    """64 instances on the normal queue, two jobs per invocation, quick retries, and a
    smaller reserve cap (answers at length cost CPU, not coverage)."""
    priorities = dict(config.priorities)
    priorities[Priority.normal] = priorities[Priority.normal].model_copy(
        update={"max_concurrency": INSTANCES}
    )
    models = {
        name: model.model_copy(update={"default_max_tokens": RESERVE_CAP})
        for name, model in config.models.items()
    }
    return config.model_copy(
        update={
            "priorities": priorities,
            "models": models,
            "worker": config.worker.model_copy(update={"batch_size": 2, "batch_window_s": 0}),
            "retries": config.retries.model_copy(update={"base_s": 0.05, "max_backoff_s": 0.5}),
        }
    )


@dataclass
class LedgerSampler:
    """Reads the day ledger over and over while the run goes on: the most it ever held.
    A sharded ledger (its day's ``layout`` says how many shards) is read in one
    transactional read of all its shards: their sum at one moment."""

    table: str
    limit_nanos: int
    day: str = field(default_factory=utc_day)
    samples: int = 0
    max_committed: int = 0
    over: list[tuple[int, int]] = field(default_factory=list)  # (committed, spent) past it
    last: tuple[int, int] = (0, 0)  # (committed, spent) of the latest sample
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _ddb: Any = None

    def start(self) -> None:
        self._ddb = boto3.client("dynamodb")
        self._thread = threading.Thread(target=self._run, name="ledger-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.sample()

    def sample(self) -> None:
        layout = self._ddb.get_item(TableName=self.table, Key=layout_key(self.day)).get("Item")
        shards = int(layout["shards"]["N"]) if layout else 1
        keys = [day_key(self.day, i) for i in range(shards)]
        got = self._ddb.transact_get_items(
            TransactItems=[{"Get": {"TableName": self.table, "Key": key}} for key in keys]
        )
        items = [reply.get("Item", {}) for reply in got["Responses"]]
        committed = sum(int(item.get("committed", {}).get("N", 0)) for item in items)
        spent = sum(int(item.get("spent", {}).get("N", 0)) for item in items)
        self.samples += 1
        self.last = (committed, spent)
        self.max_committed = max(self.max_committed, committed)
        if committed > self.limit_nanos or spent > self.limit_nanos:
            self.over.append((committed, spent))


class InFlight:
    """The most jobs the workers had in their pipeline at once (wraps ``handler.process``)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = self.most = 0
        self._lock = threading.Lock()
        process = handler.process

        async def counted(inv: Invocation, intake: Intake) -> Outcome:
            with self._lock:
                self.now += 1
                self.most = max(self.most, self.now)
            try:
                return await process(inv, intake)
            finally:
                with self._lock:
                    self.now -= 1

        monkeypatch.setattr(handler, "process", counted)


def billed_nanos(stats: Stats, config: Config) -> Decimal:
    """What the simulator billed, priced from the config's price table by the money
    harness's own arithmetic (never ``chatbatch.core.pricing``), in exact nano-dollars."""
    return billed_usd(stats, config) * 10**9


@dataclass
class Race:
    """One run of the race, and what it left behind."""

    config: Config
    jobs: dict[str, Job]
    worst: dict[str, int]  # nanos, by custom_id
    limit: int  # nanos
    sampler: LedgerSampler
    most_in_flight: int
    info: BatchInfo
    summary: Summary
    stats: Stats
    costs: list[dict[str, Any]]
    results: list[dict[str, Any]]
    in_queues: Counter[str]  # the jobs of the messages left in the queues at the end


@pytest.fixture(scope="module")
def race(tmp_path_factory: pytest.TempPathFactory, config: Config) -> Race:
    tmp = tmp_path_factory.mktemp("race")
    config = race_config(config)
    lines = [job_line(i) for i in range(JOBS)]
    jobs: dict[str, Job] = {}
    for number, line in enumerate(lines, 1):
        job = parse_line(json.dumps(line), config, line=number)
        jobs[job.custom_id] = job
    worst = {c: to_nanos(job.worst_case_usd(config.models[job.model])) for c, job in jobs.items()}
    # a third of what the jobs could cost: the limit is reached mid-run
    limit_usd = (Decimal(sum(worst.values())) / 3 / 10**9).quantize(Decimal("0.000001"))
    path = tmp / "jobs.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    config_path = tmp / "chatbatch.json"
    config_path.write_text(config.model_dump_json())
    options = LocalOptions(
        config_path=config_path,
        budget_usd=limit_usd,
        rpm=1_000_000,  # the budget is the bottleneck, never the rate limit
        tpm=1_000_000_000,
        simulator=GREEDY,
        seed=SEED,
        timeout_s=120,
    )
    with pytest.MonkeyPatch.context() as monkeypatch, LocalRuntime(options) as rt:
        in_flight = InFlight(monkeypatch)
        sampler = LedgerSampler(rt.resources.table, to_nanos(limit_usd))
        sampler.start()
        started = time.monotonic()
        plan = rt.submit(path)
        rt.wait(plan)  # every job answered or deferred
        for mapping in rt.mappings.values():  # calls in flight end; nothing new starts
            mapping.stop()
        sampler.stop()
        info = rt.batches.get(plan.batch_id)
        assert info is not None
        summary = rt.write_outputs(path, plan, info, tmp / "out", time.monotonic() - started)
        in_queues = jobs_in_queues(rt.resources.queues.values())
        assert rt.simulator is not None
        stats = rt.simulator.stats()
    if utc_day() != sampler.day:
        pytest.skip("the run crossed UTC midnight: its money is in two day ledgers")
    return Race(
        config=rt.config,
        jobs=jobs,
        worst=worst,
        limit=to_nanos(limit_usd),
        sampler=sampler,
        most_in_flight=in_flight.most,
        in_queues=in_queues,
        info=info,
        summary=summary,
        stats=stats,
        costs=read_jsonl(tmp / "out" / "costs.jsonl"),
        results=read_jsonl(tmp / "out" / "results.jsonl"),
    )


def test_committed_and_spent_never_pass_the_limit(race: Race):
    """At every sample while 64 instances race, and at the end; nor does the bill."""
    sampler, limit = race.sampler, race.limit
    assert sampler.samples >= 10
    assert sampler.over == []
    assert sampler.max_committed <= limit
    billed = billed_nanos(race.stats, race.config)  # so the provider never billed past it
    assert billed <= limit, f"billed {billed} nanos > the limit {limit} nanos"
    committed, spent = sampler.last  # after the run
    assert committed == spent, "every reservation settled or released"


def test_every_billed_answer_is_booked_and_the_ledger_is_the_cost_records(race: Race):
    info, costs = race.info, race.costs
    spent = race.sampler.last[1]
    billed = billed_nanos(race.stats, race.config)
    assert spent >= billed, f"booked {spent} nanos < billed {billed} nanos"
    assert spent == sum(int(c["cost_nanos"]) for c in costs) == info.cost_nanos
    # above the bill, only what was booked at a worst case (a record with usage is
    # rounded up to a whole nano-dollar: at most one per record)
    estimated = [c for c in costs if c["usage_estimated"]]
    assert info.estimated_nanos == sum(int(c["cost_nanos"]) for c in estimated)
    assert spent - info.estimated_nanos <= billed + len(costs)
    # no call booked past its job's worst case; a call without usage booked at it
    for record in costs:
        assert int(record["cost_nanos"]) <= race.worst[record["custom_id"]], record
        if record["usage_estimated"]:
            assert int(record["cost_nanos"]) == race.worst[record["custom_id"]], record


def test_the_race_ran_open_caps_n_schemas_unread_answers_and_deferrals(race: Race):
    jobs, summary, info = race.jobs, race.summary, race.info
    assert race.most_in_flight >= INSTANCES // 2, race.most_in_flight
    assert {kind.value for kind in UNREAD} <= set(race.stats.faults), race.stats.faults
    estimated = [c for c in race.costs if c["usage_estimated"]]
    unread = [c for c in estimated if c["attempt"] is not None]  # an answer never read
    no_usage = [c for c in estimated if c["attempt"] is None]  # a result without usage
    assert unread and no_usage, (len(unread), len(no_usage))
    assert info.estimated_calls == len(estimated) == summary.estimated_calls
    answered = {r["custom_id"]: r["response"]["body"] for r in race.results}
    for cid, body in answered.items():
        job = jobs[cid]
        assert len(body["choices"]) == job.choices, cid
        if cid.startswith("open-") and body.get("usage"):  # answered at the cap it was sent
            assert body["usage"]["completion_tokens"] == RESERVE_CAP * job.choices, cid
    opened = {jobs[cid].model for cid in answered if cid.startswith("open-")}
    assert opened == {"deepseek-chat", "gpt-4.1", "gemini-2.5-flash"}
    assert any("tools" in jobs[cid].params for cid in answered)  # n = 2, open cap
    assert any("response_format" in jobs[cid].params for cid in answered)  # n = 3..4
    assert summary.deferred > 0 and info.deferred > 0, "the limit was reached"
    assert (summary.failed, summary.dead_lettered) == (0, 0)
    # every job accounted for: answered, waiting for the budget, or still in its queue
    # (received by nobody once the spent day paused the consumers; it runs on resume)
    assert summary.succeeded + summary.deferred + summary.queued == JOBS
    # the ones not answered are really in their queues
    assert set(jobs) - set(answered) <= set(race.in_queues), set(jobs) - set(answered)
