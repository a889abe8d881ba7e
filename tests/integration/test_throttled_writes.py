"""A run whose hot DynamoDB items are throttled, as a deployed table throttles them.

The local runtime limits every item to ``WCU_S`` write units a second
(``LocalOptions.throttle_wcu_s``, ``chatbatch.local.throttle``): low enough that the day's
budget ledger, the batch's counters and the limiter's item are refused again and again
while 24 Lambda instances (six per priority) run a realistic job mix (``bench._mix``)
against a daily limit a sixth of what the jobs could cost (``LIMIT_SHARE``). A refused
plain write is retried by botocore, a refused transaction by ``state.ddb.transact``; what
still fails fails the invocation, and its messages come back.

What must hold, throttled: writes really were refused; every job is accounted for
(answered, waiting for the budget, or still in its queue: none lost, none failed); no
job's request reached the provider twice; the ledger's ``committed`` never passed the
limit (sampled while the run goes on, and at the end) and its ``spent`` is the sum of the
cost records and the batch's cost.

The run is a fixture over ``SCALES``: the config's ``scale.target_jobs_per_s`` (None: one
item per hot kind). The sharded ledger's target is added there when the sharded ledger
lands, with the sampler reading its shards.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest

from bench._common import read_jsonl
from bench._mix import write_mix
from chatbatch.core.config import Config
from chatbatch.core.days import utc_day
from chatbatch.core.job_lines import parse_line
from chatbatch.core.pricing import to_nanos
from chatbatch.core.resources import TABLE_PK
from chatbatch.local.options import LocalOptions
from chatbatch.local.runtime import LocalRuntime
from chatbatch.local.simulator import SimulatorSettings, Stats
from chatbatch.local.summary import Summary
from chatbatch.state.batches import BatchInfo
from chatbatch.state.budget.ledger import day_key
from tests.integration.test_budget_race import LedgerSampler, never_received

pytestmark = pytest.mark.slow

JOBS = 96
PER_PRIORITY = 6  # 4 priorities x 6: 24 instances
WCU_S = 40.0  # per item: the ledger takes 4 WCU per invocation, so ~10 invocations a second
# the daily limit: this share of what the jobs could cost (their answers cost about a
# third of it: about half of the jobs are answered before the limit is reached)
LIMIT_SHARE = 6
SCALES: list[float | None] = [None]
CUSTOM_ID = re.compile(r"^[chnl]\d{6}")


def throttled_config(config: Config, target_jobs_per_s: float | None) -> Config:
    """Two jobs per invocation, quick provider retries, and the scale target given."""
    return config.model_copy(
        update={
            "worker": config.worker.model_copy(update={"batch_size": 2, "batch_window_s": 0}),
            "retries": config.retries.model_copy(update={"base_s": 0.05, "max_backoff_s": 0.5}),
            "scale": config.scale.model_copy(update={"target_jobs_per_s": target_jobs_per_s}),
        }
    )


@dataclass
class Throttled:
    """One throttled run, and what it left behind."""

    limit: int  # nanos
    throttled: int  # writes refused (a transaction once)
    hot: Counter[str]  # refusals by partition key
    sampler: LedgerSampler
    info: BatchInfo
    summary: Summary
    stats: Stats
    costs: list[dict[str, Any]]
    visible: int  # messages never received when the run ended (the budget paused them)
    wall_s: float


def sent_per_job(stats: Stats) -> Counter[str]:
    """How many requests of each job reached the simulator (its prompt starts with its id)."""
    sent: Counter[str] = Counter()
    for body in stats.bodies:
        match = CUSTOM_ID.match(str(body["messages"][0]["content"]))
        assert match, body
        sent[match.group(0)] += 1
    return sent


@pytest.fixture(scope="module", params=SCALES, ids=lambda target: f"target={target}")
def throttled(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, config: Config
) -> Throttled:
    tmp = tmp_path_factory.mktemp("throttled")
    config = throttled_config(config, request.param)
    path = write_mix(tmp / "jobs.jsonl", JOBS)
    worst = 0
    for number, text in enumerate(path.read_text().splitlines(), 1):
        job = parse_line(text, config, line=number)
        worst += to_nanos(job.worst_case_usd(config.models[job.model]))
    limit_usd = (Decimal(worst) / LIMIT_SHARE / 10**9).quantize(Decimal("0.000001"))
    config_path = tmp / "chatbatch.json"
    config_path.write_text(config.model_dump_json())
    options = LocalOptions(
        config_path=config_path,
        budget_usd=limit_usd,
        concurrency=PER_PRIORITY,
        rpm=1_000_000,  # the budget and the table are the bottlenecks, never the rate limit
        tpm=1_000_000_000,
        # every answer runs to its cap: the jobs cost about their worst case, and a third
        # of them spends the limit
        simulator=SimulatorSettings(latency_ms=20, answer_tokens=100_000, keep_bodies=True),
        throttle_wcu_s=WCU_S,
        # a failed invocation's messages come back after this (the default: the function
        # timeout and a minute); longer than any invocation here, so never while one runs
        visibility_timeout_s=30,
        timeout_s=80,
    )
    with LocalRuntime(options) as rt:
        sampler = LedgerSampler(rt.resources.table, to_nanos(limit_usd))
        sampler.start()
        started = time.monotonic()
        try:
            plan = rt.submit(path)
            rt.wait(plan)
            for mapping in rt.mappings.values():  # calls in flight end; nothing new starts
                mapping.stop()
        finally:
            sampler.stop()
        wall = time.monotonic() - started
        info = rt.batches.get(plan.batch_id)
        assert info is not None
        summary = rt.write_outputs(path, plan, info, tmp / "out", wall)
        visible = sum(never_received(url) for url in rt.resources.queues.values())
        assert rt.simulator is not None and rt.throttle is not None
        stats = rt.simulator.stats()
        refused = rt.throttle.throttled
        hot = Counter({pk: n for (_table, pk, _sk), n in rt.throttle.refused_items.items()})
    if utc_day() != sampler.day:
        pytest.skip("the run crossed UTC midnight: its money is in two day ledgers")
    return Throttled(
        limit=to_nanos(limit_usd),
        throttled=refused,
        hot=hot,
        sampler=sampler,
        info=info,
        summary=summary,
        stats=stats,
        costs=read_jsonl(tmp / "out" / "costs.jsonl"),
        visible=visible,
        wall_s=wall,
    )


def test_hot_items_were_throttled(throttled: Throttled) -> None:
    """The day's ledger among them, and the run still answered jobs."""
    assert throttled.throttled > 0
    assert throttled.hot[day_key(throttled.sampler.day)[TABLE_PK]["S"]] > 0, throttled.hot
    assert throttled.summary.ddb_writes_throttled == throttled.throttled
    assert throttled.summary.succeeded > 0


def test_every_job_is_accounted_for(throttled: Throttled) -> None:
    """Answered, waiting for the budget, or still in its queue: none lost, none failed."""
    summary = throttled.summary
    assert (summary.failed, summary.dead_lettered) == (0, 0)
    assert summary.deferred > 0, "the limit was reached"
    assert summary.succeeded + summary.deferred + summary.queued == JOBS
    assert summary.queued == throttled.visible  # the queued ones are really in their queues


def test_no_job_reached_the_provider_twice(throttled: Throttled) -> None:
    sent = sent_per_job(throttled.stats)
    assert sent and max(sent.values()) == 1, sent.most_common(3)
    assert len(sent) == throttled.stats.requests >= throttled.summary.succeeded


def test_the_budget_never_overshoots_and_the_ledger_is_the_cost_records(
    throttled: Throttled,
) -> None:
    sampler, limit = throttled.sampler, throttled.limit
    assert sampler.samples >= 10
    assert sampler.over == [] and sampler.max_committed <= limit
    committed, spent = sampler.last
    assert committed == spent, "every reservation settled or released"
    costs = throttled.costs
    assert spent == sum(int(c["cost_nanos"]) for c in costs) == throttled.info.cost_nanos > 0
    assert len({c["custom_id"] for c in costs}) == len(costs) == throttled.summary.succeeded
