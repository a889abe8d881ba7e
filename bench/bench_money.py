"""Money under faults: what the provider billed against what the pipeline booked, per fault
mix, and how far each budget was passed (issue 13); ``tests/integration/test_money.py``
runs the same harness small and asserts on it.

Each mix is one run of the local runtime with two batches of a realistic job mix
(open-ended jobs without ``max_tokens``, ``n`` > 1, tool schemas and tool-call histories,
role presets, streams; three models at three prices): the first batch has its own budget
(``submit --budget-usd``), the second none, and the daily limit is set so that both are
reached: some jobs of each batch are deferred.

- **billed**: the simulator's own count (``Stats.billed_by_model``: every answer it
  generated, read or not) priced here at the run's price table, with arithmetic of its own
  (never ``chatbatch.core.pricing``: the check shares no code with what it checks).
- **booked**: the day ledger's ``spent``, checked against the sum of the cost records in
  S3 and the summaries' ``cost_usd`` (and the first batch's ledger against its own).
- **overshoot**: how far the day ledger and the first batch's ledger (``committed`` or
  ``spent``, at the end and sampled 4 times a second while the run goes) went past their
  limits, and the provider's bill past the daily limit.

Target: booked >= billed, booked = billed when every answer carried usage (no faults, or
only errors answered before generation), 0 overshoot. A mix is a row; ``--repeat N``
runs every mix N times (default once)::

    python -m bench.bench_money [--jobs 300] [--repeat 1] [--quick] [--no-write]
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3

from bench._common import (
    Section,
    base_config,
    finish,
    parser,
    read_jsonl,
    runtime,
    say,
    table,
    workdir,
    write_config,
)
from chatbatch.client.submit import Plan, iter_jobs, register
from chatbatch.core.config import Config, Model
from chatbatch.core.days import utc_day
from chatbatch.core.resources import TABLE_PK, TABLE_SK
from chatbatch.local.options import LocalOptions
from chatbatch.local.runtime import LocalRuntime
from chatbatch.local.simulator import FaultKind, SimulatorSettings, Stats
from chatbatch.local.simulator.settings import GENERATED  # billed in full, read whole or not
from chatbatch.local.summary import Summary
from chatbatch.state.batches import BatchInfo
from chatbatch.state.budget.ledger import batch_ledger_key, day_key

K = FaultKind
# faults answered with an error status before generation: nothing billed, nothing booked
ANSWERED = frozenset({K.error_500, K.error_503, K.rate_limited})


@dataclass(frozen=True)
class Mix:
    name: str
    faults: Mapping[FaultKind, float]

    @property
    def damaging(self) -> bool:
        """Whether some answers are billed and not read whole with their usage."""
        return any(kind in GENERATED for kind in self.faults)

    @property
    def exact(self) -> bool:
        """Whether every billed answer is read with its usage (and nothing else may have
        been billed): then booked = billed, to the nano-dollar (the ledger rounds each cost
        up to a nano-dollar; every configured price is a whole number of them per token)."""
        return all(kind in ANSWERED for kind in self.faults)

    @property
    def impatient(self) -> bool:
        """Whether the client must give up on an answer (hangs, slow answers)."""
        return bool({K.hang, K.slow} & set(self.faults))


MIXES = (
    Mix("no faults", {}),
    Mix("no usage 10%", {K.no_usage: 0.10}),
    Mix(
        "damaged: truncate 3%, corrupt 2%, reset_after 2%",
        {K.truncate: 0.03, K.corrupt: 0.02, K.reset_after: 0.02},
    ),
    Mix("transport: reset 3%, hang 1%, slow 1%", {K.reset: 0.03, K.hang: 0.01, K.slow: 0.01}),
    Mix(
        "errors: 500 5%, 503 2%, 429 5%",
        {K.error_500: 0.05, K.error_503: 0.02, K.rate_limited: 0.05},
    ),
    Mix(
        "everything: all of the above at once",
        {
            K.no_usage: 0.05,
            K.truncate: 0.02,
            K.corrupt: 0.02,
            K.reset_after: 0.02,
            K.reset: 0.02,
            K.hang: 0.01,
            K.slow: 0.01,
            K.error_500: 0.03,
            K.error_503: 0.01,
            K.rate_limited: 0.03,
        },
    ),
)

# The run's settings: short waits so that a mix takes seconds, answers near their caps so
# that a tight budget is spent on answers rather than held by reservations in flight.
READ_TIMEOUT_S = 1.5  # below HANG_S: a hang and a slow answer are given up on
PATIENT_READ_S = 30.0  # mixes without hangs: no answer given up on under a busy machine
HANG_S = 4.0
DEFAULT_MAX_TOKENS = 512  # the cap sent to open-ended jobs (shipped: 4,096)
ANSWER_TOKENS = 400  # the simulator's answer length, cut at the cap sent
BATCH_SHARE = Decimal("0.35")  # of the first batch's summed worst cases: its budget
DAY_SHARE = Decimal("0.30")  # of the second batch's summed worst cases: the day's room left


# --- the jobs -----------------------------------------------------------------------

TOOL = {
    "type": "function",
    "function": {
        "name": "lookup",
        "description": "Find a customer record by its id.",
        "parameters": {
            "type": "object",
            "properties": {"id": {"type": "string", "description": "the record id"}},
            "required": ["id"],
        },
    },
}
TOPICS = ("invoices", "refunds", "shipping", "a login bug", "the roadmap", "pricing")


def _history(i: int, topic: str) -> list[dict[str, Any]]:
    """A conversation with a name, a tool call and its result, then a new question."""
    call = {
        "id": f"call_{i}",
        "type": "function",
        "function": {"name": "lookup", "arguments": json.dumps({"id": f"c-{i}"})},
    }
    return [
        {"role": "system", "content": "You are a support agent."},
        {"role": "user", "name": "ana", "content": f"Customer {i} asks about {topic}."},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": f"call_{i}", "content": json.dumps({"tier": "gold"})},
        {"role": "user", "name": "ana", "content": "Draft the reply."},
    ]


def money_line(custom_id: str, i: int) -> dict[str, Any]:
    """The ``i``-th job of the mix: six shapes in turn."""
    topic = TOPICS[i % len(TOPICS)]
    prompt = f"{i}: explain {topic} to a new colleague"
    shape = i % 6
    if shape == 0:  # open-ended, the default model
        return {"custom_id": custom_id, "prompt": prompt}
    if shape == 1:  # capped, streamed
        return {"custom_id": custom_id, "prompt": prompt, "max_tokens": 60, "stream": True}
    if shape == 5:  # a role preset: gpt-4.1 open-ended, or gemini at the role's cap
        role = "code" if i % 12 == 5 else "summarize"
        return {"custom_id": custom_id, "role": role, "prompt": prompt, "stream": i % 4 == 1}
    body: dict[str, Any]
    if shape == 2:  # three choices, capped
        body = {
            "model": "gpt-4.1",
            "messages": [{"role": "user", "content": prompt}],
            "n": 3,
            "max_tokens": 40,
        }
    elif shape == 3:  # a tool schema, open-ended, streamed
        body = {
            "model": "gpt-4.1",
            "messages": [{"role": "user", "content": prompt}],
            "tools": [TOOL],
            "tool_choice": "auto",
            "stream": True,
        }
    else:  # a tool-call history, two choices, streamed
        body = {
            "model": "deepseek-chat",
            "messages": _history(i, topic),
            "tools": [TOOL],
            "n": 2,
            "max_tokens": 80,
            "stream": True,
        }
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def write_money_jobs(path: Path, n: int, *, start: int = 0, prefix: str = "m") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as out:
        for i in range(start, start + n):
            out.write(json.dumps(money_line(f"{prefix}{i:05d}", i)) + "\n")
    return path


def money_config(tmp: Path, read_timeout_s: float) -> Path:
    config = base_config()
    return write_config(
        tmp / "money.json",
        config,
        providers={"timeouts": {"read_s": read_timeout_s}},
        retries={"base_s": 0.05, "max_backoff_s": 0.5},
        models={"default_max_tokens": DEFAULT_MAX_TOKENS},
    )


def worst_case_usd(path: Path, config: Config) -> Decimal:
    """The summed worst cases of a file's jobs (only to pick limits the run will reach)."""
    return sum(
        (job.worst_case_usd(config.models[job.model]) for job in iter_jobs(path, config, "x")),
        Decimal(0),
    )


# --- what the provider billed, priced here -------------------------------------------

PER_M = Decimal(1_000_000)


def billed_usd(stats: Stats, config: Config, *, batch: bool = False) -> Decimal:
    """The simulator's bill at the configured prices: uncached prompt tokens at the input
    price, cached ones at the cached-input price, output at the output price. ``batch``:
    the lines its batch APIs answered (``batch_billed_by_model``) at the batch prices."""
    by_id: dict[str, Model] = {}
    for name, model in config.models.items():
        if model.model_id in by_id and by_id[model.model_id] != model:
            raise ValueError(f"model id {model.model_id!r} is configured twice ({name})")
        by_id[model.model_id] = model
    total = Decimal(0)
    bills = stats.batch_billed_by_model if batch else stats.billed_by_model
    for model_id, bill in bills.items():
        model = by_id[model_id].batch_priced() if batch else by_id[model_id]
        uncached = bill.prompt_tokens - bill.cached_tokens
        total += (
            uncached * model.input_per_m
            + bill.cached_tokens * model.cached_input_per_m
            + bill.completion_tokens * model.output_per_m
        ) / PER_M
    return total


# --- what the pipeline booked --------------------------------------------------------

NANO = Decimal("1e-9")
MICRO = Decimal("1e-6")  # a configured amount has at most six decimals


@dataclass(frozen=True)
class Ledger:
    committed: Decimal
    spent: Decimal

    def overshoot(self, limit: Decimal) -> Decimal:
        return max(Decimal(0), self.committed - limit, self.spent - limit)


class PeakWatch:
    """The most ``committed`` each watched ledger held while the run went, sampled each
    time the runtime polls its batch (4 times a second)."""

    def __init__(self, rt: LocalRuntime, batch_id: str) -> None:
        self._ddb = boto3.client("dynamodb")
        self._table = rt.resources.table
        self._batch_id = batch_id
        self.day = Decimal(0)
        self.batch = Decimal(0)

    def _committed(self, key: dict[str, Any]) -> Decimal:
        got = self._ddb.get_item(TableName=self._table, Key=key, ConsistentRead=True)
        return _usd(got.get("Item", {}), "committed")

    def __call__(self, _: BatchInfo) -> None:
        self.day = max(self.day, self._committed(day_key(utc_day())))
        self.batch = max(self.batch, self._committed(batch_ledger_key(self._batch_id)))


def ledgers(rt: LocalRuntime, prefix: str) -> dict[str, Ledger]:
    """Every ledger item whose key starts with ``prefix``, read raw from the table."""
    ddb = boto3.client("dynamodb")
    found: dict[str, Ledger] = {}
    pages = ddb.get_paginator("scan").paginate(
        TableName=rt.resources.table,
        FilterExpression="begins_with(#pk, :p) AND #sk = :ledger",
        ExpressionAttributeNames={"#pk": TABLE_PK, "#sk": TABLE_SK},
        ExpressionAttributeValues={":p": {"S": prefix}, ":ledger": {"S": "ledger"}},
        ConsistentRead=True,
    )
    for page in pages:
        for item in page["Items"]:
            found[item[TABLE_PK]["S"]] = Ledger(_usd(item, "committed"), _usd(item, "spent"))
    return found


def _usd(item: Mapping[str, Any], name: str) -> Decimal:
    return Decimal(item.get(name, {}).get("N", "0")) * NANO


@dataclass
class BatchRun:
    """One batch of a run, read back after the run: its summary and cost records."""

    batch_id: str
    limit_usd: Decimal | None  # its own budget (``submit --budget-usd``), if any
    summary: Summary
    costs: list[dict[str, Any]]  # its cost records in S3, one per booked call
    cost_nanos: int  # its counters' cost

    @property
    def records_usd(self) -> Decimal:
        return sum((Decimal(c["cost_usd"]) for c in self.costs), Decimal(0))

    @property
    def summary_usd(self) -> Decimal:
        return self.summary.cost_usd


@dataclass
class Books:
    """One mix's run: what the provider billed, what the pipeline booked, the limits."""

    mix: Mix
    jobs: int
    stats: Stats
    billed: Decimal
    capped: BatchRun  # the batch under its own budget
    other: BatchRun  # the batch under the day's limit only
    daily_limit: Decimal
    days: dict[str, Ledger]  # the day ledgers (one, unless the run crossed midnight)
    batch: Ledger  # the capped batch's ledger
    peaks: PeakWatch  # the most committed on each while the run went
    wall_s: float

    @property
    def batches(self) -> tuple[BatchRun, BatchRun]:
        return self.capped, self.other

    @property
    def succeeded(self) -> int:
        return sum(b.summary.succeeded for b in self.batches)

    @property
    def deferred(self) -> tuple[int, int]:
        return self.capped.summary.deferred, self.other.summary.deferred

    @property
    def unfinished(self) -> int:
        """Jobs neither succeeded nor deferred (failed, dead-lettered, paused, cancelled)."""
        return self.jobs - self.succeeded - sum(self.deferred)

    @property
    def estimated_calls(self) -> int:
        return sum(b.summary.estimated_calls for b in self.batches)

    @property
    def booked_calls(self) -> int:
        return sum(len(b.costs) for b in self.batches)

    @property
    def day(self) -> Ledger:
        return Ledger(
            sum((d.committed for d in self.days.values()), Decimal(0)),
            sum((d.spent for d in self.days.values()), Decimal(0)),
        )

    @property
    def booked(self) -> Decimal:
        return self.day.spent

    @property
    def day_overshoot(self) -> Decimal:
        at_end = (d.overshoot(self.daily_limit) for d in self.days.values())
        return max(Decimal(0), self.peaks.day - self.daily_limit, *at_end)

    @property
    def billed_overshoot(self) -> Decimal:
        """How far the provider's own bill went past the daily limit (the run is the day's
        only spending): what a ledger that misses a billed call would not show."""
        return max(Decimal(0), self.billed - self.daily_limit)

    @property
    def batch_overshoot(self) -> Decimal:
        limit = self.capped.limit_usd
        assert limit is not None
        return max(self.batch.overshoot(limit), self.peaks.batch - limit)

    @property
    def consistent(self) -> bool:
        """The day ledger = the cost records = the summaries = the batch counters, the
        capped batch's ledger = its records = its summary, and no reservation left."""
        records = sum((b.records_usd for b in self.batches), Decimal(0))
        summaries = sum((b.summary_usd for b in self.batches), Decimal(0))
        counters = sum(b.cost_nanos for b in self.batches) * NANO
        capped = self.capped
        return (
            self.day.spent == records == summaries == counters
            and self.batch.spent == capped.records_usd == capped.summary_usd
            and self.day.committed == self.day.spent
            and self.batch.committed == self.batch.spent
        )


CAPPED = "money-capped"  # the batch with its own budget


def run_mix(
    tmp: Path,
    mix: Mix,
    jobs: int,
    *,
    seed: int = 0,
    inject: bool = True,
    timeout_s: float = 300,
) -> Books:
    """One run of ``jobs`` jobs in two batches under ``mix``; ``inject`` sends one fault
    of each kind of the mix first, so that every kind is seen at any size."""
    tmp.mkdir(parents=True, exist_ok=True)
    config_path = money_config(tmp, READ_TIMEOUT_S if mix.impatient else PATIENT_READ_S)
    config = Config.model_validate_json(config_path.read_text())
    half = jobs // 2
    capped_path = write_money_jobs(tmp / "capped.jsonl", half, prefix="c")
    other_path = write_money_jobs(tmp / "other.jsonl", jobs - half, start=half, prefix="o")
    batch_limit = (worst_case_usd(capped_path, config) * BATCH_SHARE).quantize(MICRO)
    daily_limit = batch_limit + (worst_case_usd(other_path, config) * DAY_SHARE).quantize(MICRO)
    sim = SimulatorSettings(
        fault_rates=dict(mix.faults),
        latency_ms=5,
        hang_s=HANG_S,
        answer_tokens=ANSWER_TOKENS,
        stream_chunk_tokens=16,
    )
    options = LocalOptions(
        config_path=config_path,
        simulator=sim,
        seed=seed,
        timeout_s=timeout_s,
        budget_usd=daily_limit,
        rpm=100_000,
        tpm=100_000_000,
        log_file=tmp / "worker.log",  # a warning per estimated call: not on the console
    )
    started = time.monotonic()
    with runtime(options) as rt:
        assert rt.simulator is not None
        if inject:
            rt.simulator.inject(*mix.faults)
        batches = ((CAPPED, capped_path, batch_limit), ("money-other", other_path, None))
        plans: list[Plan] = []
        for batch_id, path, limit in batches:
            plan = rt.submit(path, batch_id)  # queued in order: the capped batch first
            if limit is not None:  # what `submit --budget-usd` registers
                register(plan, rt.batches, budget_nanos=int(limit / NANO))
            plans.append(plan)
        peaks = PeakWatch(rt, CAPPED)
        for plan in plans:
            rt.wait(plan, on_progress=peaks)
        wall = time.monotonic() - started
        for mapping in rt.mappings.values():  # nothing runs while the books are read
            mapping.stop()
        stats = rt.simulator.stats()
        runs = [
            read_batch(rt, plan, path, limit, tmp / f"out-{batch_id}", wall)
            for plan, (batch_id, path, limit) in zip(plans, batches, strict=True)
        ]
        days = ledgers(rt, "budget#day#")
        key = batch_ledger_key(CAPPED)[TABLE_PK]["S"]
        batch = ledgers(rt, key).get(key, Ledger(Decimal(0), Decimal(0)))
        return Books(
            mix=mix,
            jobs=jobs,
            stats=stats,
            billed=billed_usd(stats, rt.config),
            capped=runs[0],
            other=runs[1],
            daily_limit=daily_limit,
            days=days,
            batch=batch,
            peaks=peaks,
            wall_s=wall,
        )


def read_batch(
    rt: LocalRuntime, plan: Plan, path: Path, limit: Decimal | None, out: Path, wall: float
) -> BatchRun:
    info = rt.batches.get(plan.batch_id) or BatchInfo(batch_id=plan.batch_id)
    out.mkdir(parents=True, exist_ok=True)
    summary = rt.write_outputs(path, plan, info, out, wall)
    return BatchRun(plan.batch_id, limit, summary, read_jsonl(out / "costs.jsonl"), info.cost_nanos)


# --- the benchmark ------------------------------------------------------------------


def usd(value: Decimal) -> str:
    return f"{value:.6f}"


def row(b: Books) -> list[str]:
    ratio = b.booked / b.billed if b.billed else Decimal(0)
    return [
        b.mix.name,
        str(b.jobs),
        f"{b.succeeded} ({b.deferred[0]} + {b.deferred[1]})",
        usd(b.billed),
        usd(b.booked),
        usd(b.booked - b.billed),
        f"{ratio:.4f}",
        f"{b.stats.billed_calls} / {b.booked_calls}",
        str(b.estimated_calls),
        str(b.stats.billed_unread),
        f"{usd(b.day_overshoot)} / {usd(b.billed_overshoot)}",
        usd(b.batch_overshoot),
        "yes" if b.consistent else "NO",
        f"{b.wall_s:.0f} s",
    ]


HEADER = [
    "fault mix",
    "jobs",
    "succeeded (deferred: capped batch + other)",
    "billed $ (simulator)",
    "booked $ (day ledger)",
    "booked − billed $",
    "booked / billed",
    "calls billed / booked",
    "estimated calls",
    "unread billed calls",
    "daily overshoot $",
    "batch overshoot $",
    "ledger = records = summary",
    "wall",
]


def problems(b: Books) -> list[str]:
    """What misses a target, in words (nothing: every target met)."""
    found = []
    if b.booked < b.billed:
        found.append(f"booked {usd(b.booked)} < billed {usd(b.billed)}")
    if b.mix.exact and b.booked != b.billed:
        found.append(f"booked {usd(b.booked)} != billed {usd(b.billed)}, every answer read")
    if b.booked_calls < b.stats.billed_calls:
        found.append(f"{b.stats.billed_calls} calls billed, {b.booked_calls} booked")
    if b.day_overshoot or b.billed_overshoot or b.batch_overshoot:
        found.append(
            f"overshoot: day {usd(b.day_overshoot)} (billed {usd(b.billed_overshoot)}), "
            f"batch {usd(b.batch_overshoot)}"
        )
    if not b.consistent:
        found.append("ledger, cost records and summaries disagree")
    if b.unfinished:
        found.append(f"{b.unfinished} jobs neither succeeded nor deferred")
    if not all(b.deferred):
        found.append(f"a limit was not reached (deferred: {b.deferred})")
    return found


def main() -> None:
    p = parser(__doc__)
    p.set_defaults(repeat=1)
    p.add_argument("--jobs", type=int, default=None, help="jobs per mix (default 300)")
    args = p.parse_args()
    jobs = args.jobs or (40 if args.quick else 300)
    section = Section("money", "Money under faults: booked against billed, per fault mix")
    rows, notes = [], []
    with workdir(args) as tmp:
        for r in range(args.repeat):
            for i, mix in enumerate(MIXES):
                books = run_mix(tmp / f"r{r}-mix{i}", mix, jobs, seed=r)
                rows.append(row(books))
                say(" | ".join(rows[-1]))
                notes += [f"**{mix.name}**: {p}" for p in problems(books)]
    section.add(
        f"{jobs:,} jobs per mix in two batches, one run each: the first batch under its own "
        f"budget ({BATCH_SHARE:.0%} of its jobs' summed worst cases), the second under the "
        f"day's limit only (the first's budget + {DAY_SHARE:.0%} of the second's summed worst "
        "cases), so both limits are reached. The jobs, six shapes in turn: open-ended (no "
        "max_tokens), capped and streamed, n=3 on gpt-4.1, a tool schema (open-ended, "
        "streamed), a tool-call history with a name and n=2, a role preset (gpt-4.1 "
        f"open-ended or gemini-2.5-flash); default_max_tokens {DEFAULT_MAX_TOKENS}, the "
        f"simulator answering {ANSWER_TOKENS} tokens cut at the cap sent. Read timeout "
        f"{READ_TIMEOUT_S:g} s where the mix hangs (hangs and slow answers last {HANG_S:g} s), "
        f"else {PATIENT_READ_S:g} s; one fault of each kind of the mix first, then the rates."
    )
    section.add(table(rows, HEADER))
    section.add(
        "billed: the simulator's `billed_by_model` (every answer it generated, read or not) "
        "priced by the benchmark at the run's price table; booked: the day ledger's `spent`, "
        "= the cost records in S3 = the summaries' `cost_usd` = the batch counters (and the "
        "capped batch's ledger = its records = its summary); calls booked: cost records "
        "(answers read + calls booked at their worst case, `usage_estimated`); unread: "
        "billed by the simulator, never delivered whole; overshoot: max(0, committed − "
        "limit, spent − limit) of the day ledger and of the capped batch's ledger (at the "
        "end, and `committed` read 4 times a second while the run went), and "
        "max(0, billed − daily limit) (the run is the day's only spending). Target: "
        "booked ≥ billed in every mix, booked = billed where every answer was read with its "
        "usage (no faults; errors answered before generation), 0 overshoot."
    )
    section.add("Not met: " + "; ".join(notes) if notes else "Every target met in every mix.")
    finish(section, args)


if __name__ == "__main__":
    main()
