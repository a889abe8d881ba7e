"""A run whose hot DynamoDB items are throttled, as a deployed table throttles them.

The local runtime limits every item to ``WCU_S`` write units a second
(``LocalOptions.throttle_wcu_s``, ``chatbatch.local.throttle``): low enough that the day's
budget ledger, the batch's counters and the limiter's item are refused again and again
while 24 Lambda instances (six per priority) run a realistic job mix (``bench._mix``)
against a daily limit a sixth of what the jobs could cost (``LIMIT_SHARE``). A refused
plain write is retried by botocore, a refused transaction by ``state.ddb.transact``; what
still fails fails the invocation, and its messages come back.

The run goes until the spent day pauses the pipeline (the jobs of an invocation that
failed on a throttled write wait in their queue, their reservations held), then the
daily limit is raised (``budget set``) and it goes on, still throttled, until every job
is answered. What must hold: writes really were refused; until the pause, no job failed
and the ledger's ``committed`` never passed the limit (sampled while the run goes on);
in the end every job answered once (none lost, none failed), no job's request reached
the provider twice, every reservation settled, and the ledger's ``spent`` is the sum of
the cost records and the batch's cost.

The run is a fixture over ``SCALES``, the config's ``scale.target_jobs_per_s``: 750
jobs/s in invocations of two puts the day's ledger, its open markers and the batch's
counters in 4 shards each (``core/scale.py``), and the sampler reads the ledger's shards
in one transactional read. (The same run with one item per hot kind needs about 60 WCU/s
to get through in reasonable time: at 40 its one ledger item lets about ten invocations
a second through, and the run crawls.)
"""

from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import boto3
import pytest

from bench._common import read_jsonl
from bench._mix import write_mix
from chatbatch.client.budget import set_daily_limit
from chatbatch.client.deployment import connect
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
from chatbatch.state.budget.budget import Budget
from chatbatch.state.budget.ledger import day_key
from chatbatch.worker import budget_pause
from tests.integration.test_budget_race import LedgerSampler

pytestmark = pytest.mark.slow

JOBS = 96
PER_PRIORITY = 6  # 4 priorities x 6: 24 instances
# per item: a ledger shard takes 4 WCU per invocation charged on it (a reservation and a
# settle), so ~5 invocations a second each; low enough to throttle on a busy machine too
# (at 40 a CI run with three other test files beside it was never throttled)
WCU_S = 20.0
# the daily limit: this share of what the jobs could cost (their answers cost about a
# third of it: about half of the jobs are answered before the limit is reached)
LIMIT_SHARE = 6
SCALES: list[float | None] = [750]
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
    sampler: LedgerSampler  # until the pause
    at_pause: BatchInfo
    info: BatchInfo  # at the end
    summary: Summary
    stats: Stats
    costs: list[dict[str, Any]]
    reserved_usd: Decimal  # reservations still open at the end
    spent_usd: Decimal  # what the day's ledger (its shards together) booked
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
        # timeout and a minute); longer than an invocation here takes, throttled
        visibility_timeout_s=12,
        timeout_s=90,
    )
    with pytest.MonkeyPatch.context() as patch, LocalRuntime(options) as rt:
        # jobs handed back while the pipeline pauses come round 1 s after `budget set`
        # lifts it, not the minute of PAUSED_DELAY_S (59 s of the 84 s run were that wait)
        patch.setattr(budget_pause, "PAUSED_DELAY_S", 1)
        sampler = LedgerSampler(rt.resources.table, to_nanos(limit_usd))
        sampler.start()
        started = time.monotonic()
        try:
            plan = rt.submit(path)
            at_pause = rt.wait(plan)
            assert rt.budget_paused(), "the limit was reached"
        finally:
            sampler.stop()
        rt.register_stack()  # `budget set` finds the runtime as it finds a deployment
        set_daily_limit(connect(rt.config), Decimal(1_000))
        info = rt.wait(plan, until=lambda i, p: i.succeeded + i.failed >= p.valid)
        for mapping in rt.mappings.values():  # calls in flight end; nothing new starts
            mapping.stop()
        wall = time.monotonic() - started
        summary = rt.write_outputs(path, plan, info, tmp / "out", wall)
        reserved = Budget(boto3.client("dynamodb"), rt.resources.table, rt.config).usage()
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
        at_pause=at_pause,
        info=info,
        summary=summary,
        stats=stats,
        costs=read_jsonl(tmp / "out" / "costs.jsonl"),
        reserved_usd=reserved.reserved_usd,
        spent_usd=reserved.spent_usd,
        wall_s=wall,
    )


def test_hot_items_were_throttled(throttled: Throttled) -> None:
    """The day's ledger among them, and the run still answered jobs."""
    assert throttled.throttled > 0
    ledger = day_key(throttled.sampler.day)[TABLE_PK]["S"]  # its shards: ``<that>#<k>``
    assert sum(n for pk, n in throttled.hot.items() if pk.startswith(ledger)) > 0, throttled.hot
    assert throttled.summary.ddb_writes_throttled == throttled.throttled
    assert throttled.summary.succeeded > 0


def test_every_job_is_answered_once_and_none_failed(throttled: Throttled) -> None:
    """Until the pause none failed, some waited for the budget; in the end every job was
    answered: none lost, none failed, each reached the provider once."""
    at_pause, info = throttled.at_pause, throttled.info
    assert (at_pause.failed, at_pause.dead_lettered) == (0, 0)
    assert 0 < at_pause.succeeded < JOBS
    assert (info.succeeded, info.failed, info.dead_lettered) == (JOBS, 0, 0)
    assert throttled.summary.succeeded == JOBS
    sent = sent_per_job(throttled.stats)
    assert len(sent) == JOBS and max(sent.values()) == 1, sent.most_common(3)
    assert throttled.stats.requests == JOBS


def test_the_budget_never_overshoots_and_the_ledger_is_the_cost_records(
    throttled: Throttled,
) -> None:
    sampler, limit = throttled.sampler, throttled.limit
    assert sampler.samples >= 10
    assert sampler.over == [] and sampler.max_committed <= limit
    assert throttled.reserved_usd == 0, "every reservation settled or released"
    costs = throttled.costs
    spent = sum(int(c["cost_nanos"]) for c in costs)
    assert spent == throttled.info.cost_nanos == to_nanos(throttled.spent_usd) > 0
    assert len({c["custom_id"] for c in costs}) == len(costs) == JOBS
