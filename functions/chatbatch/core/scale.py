"""How many shards each hot DynamoDB item needs for ``scale.target_jobs_per_s``.

One DynamoDB partition takes 1,000 write units per second (``ITEM_WCU_S``); an item that
every job writes caps the deployment at 1,000 ÷ (its write units per job) jobs/s. The
write units per job of each hot kind follow from the code (a transactional write of an
item under 1 KB costs 2 WCU) and are checked against a measured run by
``bench/bench_hot_items.py``:

- the day's budget ledger and a limited batch's ledger: one charge when an invocation's
  jobs reserve together, one addition when they settle together: 4 WCU per invocation;
- the open reservation markers of a day (one partition): a group's marker put with the
  reservations and deleted with the settle: 4 WCU per invocation;
- a batch's counters: one addition per invocation that settles jobs of the batch, plus a
  hand-back's or a failure's own: 4 WCU per invocation;
- a model's limiter shard: a lease of up to ten requests is one write of a ~2 KB item,
  its give-back another: 0.4 WCU per job while the model is below its limit, but 1.14
  measured on a model saturated at its rpm (leases shrink, workers wait and ask again:
  ``bench_hot_items --jobs 1200``), and a model runs saturated when the target is its
  rpm: 1.2 is planned.

Each kind gets the shards that keep every item at ``HEADROOM`` (half) of its limit at the
target rate, so bursts and uneven shard picks have room. Without a target every kind is
one item: the cheapest layout (one read gives a ledger's whole state) and enough for a
deployment below about a thousand jobs/s. ``docs/scale.md`` explains the sharded layouts.

The plan also sizes the worker (``core/sizing.py``: event source mappings, reserved
concurrency, account quotas), and ``ceilings`` says what each hot kind, Lambda and the
table let through, so ``chatbatch scale`` can show where the deployment stops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from chatbatch.core.config import Config
from chatbatch.core.sizing import (
    LAMBDA_ACCOUNT_CONCURRENCY,
    TABLE_WRU_PER_JOB,
    TABLE_WRU_S,
    Sizing,
    worker_sizing,
)

ITEM_WCU_S = 1_000  # write units per second one DynamoDB partition takes
HEADROOM = 0.5  # the share of it a hot item may use at the target rate
# Each invocation (each acquisition, for the limiter) picks one of a kind's S items at
# random, so in any second the busiest takes more than its 1/S share: at 2,000 jobs/s,
# 200 invocations a second over 2 items, about 130 of the 100 a second one item gets
# (the 99.9th percentile of a Poisson(100) second). Shard counts allow for that too.
IMBALANCE = 1.3
TXN_WCU = 2  # a transactional write of an item under 1 KB
PER_INVOCATION_WCU = 2 * TXN_WCU  # ledger, markers, counters: two writes per invocation
LIMITER_WCU_PER_JOB = 1.2  # a saturated model's (measured 1.14; 0.24-0.4 below its limit)


def shards_for(jobs_per_s: float, wcu_per_job: float) -> int:
    """The items needed so that none passes ``HEADROOM`` of ``ITEM_WCU_S`` at that rate,
    the busiest of them taking ``IMBALANCE`` times its share."""
    return max(1, math.ceil(jobs_per_s * wcu_per_job * IMBALANCE / (ITEM_WCU_S * HEADROOM)))


@dataclass(frozen=True)
class ScalePlan:
    """Shard counts for one config (1 everywhere without a target)."""

    target_jobs_per_s: float | None
    ledger_shards: int = 1
    marker_shards: int = 1
    counter_shards: int = 1
    limiter_shards: dict[str, int] | None = None
    worker: Sizing | None = None  # Lambda and SQS (``core/sizing.py``)

    def limiter(self, model: str) -> int:
        return (self.limiter_shards or {}).get(model, 1)


def plan(config: Config) -> ScalePlan:
    target = config.scale.target_jobs_per_s
    if target is None:
        return ScalePlan(None, worker=worker_sizing(config))
    per_invocation = PER_INVOCATION_WCU / config.worker.batch_size
    shards = shards_for(target, per_invocation)
    limiter = {
        name: shards_for(min(target, model.rpm / 60), LIMITER_WCU_PER_JOB)
        for name, model in config.models.items()
    }
    return ScalePlan(target, shards, shards, shards, limiter, worker_sizing(config))


@dataclass(frozen=True)
class Ceiling:
    """The jobs/s one part of the deployment lets through (``ITEM_WCU_S`` on each of a hot
    kind's items, at the full limit rather than ``HEADROOM``), and why. A model's limiter
    does not ``bind`` the deployment while the model's own rpm is below its ceiling."""

    limit: str
    jobs_per_s: float
    detail: str
    binds: bool = True


def ceilings(config: Config, scale: ScalePlan) -> list[Ceiling]:
    """Each hot kind's, each model's limiter's, the table's and the worker's ceiling,
    lowest first; the deployment's is the lowest that binds (``deployment_ceiling``)."""
    per_job = PER_INVOCATION_WCU / config.worker.batch_size
    rows = [
        _item_ceiling(name, shards, per_job)
        for name, shards in (
            ("day's budget ledger", scale.ledger_shards),
            ("open markers' partition", scale.marker_shards),
            ("a batch's counters", scale.counter_shards),
        )
    ]
    for name, model in config.models.items():
        row = _item_ceiling(f"limiter {name}", scale.limiter(name), LIMITER_WCU_PER_JOB)
        rate = model.rpm / 60
        rows.append(
            Ceiling(
                row.limit, row.jobs_per_s, f"{row.detail}; rpm {model.rpm:,}", rate > row.jobs_per_s
            )
        )
    rows.append(
        Ceiling(
            "table (on-demand quota)",
            TABLE_WRU_S / TABLE_WRU_PER_JOB,
            f"{TABLE_WRU_S:,} WRU/s, ~{TABLE_WRU_PER_JOB:g} per job",
        )
    )
    if scale.worker is not None:
        w = scale.worker
        each = f"{w.batch_size} jobs in {w.invocation_s:g} s per invocation"
        rows.append(
            Ceiling(
                "Lambda, one priority alone",
                w.one_priority_ceiling,
                f"{min(w.mappings.values()):,} invocations, {each}",
            )
        )
        rows.append(
            Ceiling(
                "Lambda, every priority busy",
                w.ceiling,
                f"{min(sum(w.mappings.values()), w.reserved or LAMBDA_ACCOUNT_CONCURRENCY):,} "
                f"invocations, {each}",
            )
        )
    return sorted(rows, key=lambda c: c.jobs_per_s)


def deployment_ceiling(rows: list[Ceiling]) -> Ceiling:
    return min((c for c in rows if c.binds), key=lambda c: c.jobs_per_s)


def _item_ceiling(name: str, shards: int, wcu_per_job: float) -> Ceiling:
    return Ceiling(
        name,
        shards * ITEM_WCU_S / wcu_per_job,
        f"{shards} x {ITEM_WCU_S:,} WCU/s, {wcu_per_job:g} WCU per job",
    )
