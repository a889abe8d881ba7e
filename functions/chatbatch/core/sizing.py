"""Lambda and SQS sized for ``scale.target_jobs_per_s``: the concurrency the worker needs,
each event source mapping's ``MaximumConcurrency``, the function's reserved concurrency,
and the account quotas a deployment at that rate must raise.

The worker answers the jobs of one invocation concurrently, so an invocation lasts about
one answer (``scale.answer_s``) plus its own DynamoDB, S3 and SQS calls
(``INVOCATION_OVERHEAD_S``). By Little's law the invocations running at once at the target
are ``target / batch_size * (answer_s + overhead)``; the plan asks for twice that
(``CONCURRENCY_HEADROOM``), so answers twice as slow as typical still keep the rate.

Priority comes from the limiter's shares, not from the mappings (README, ``[priorities.P]``):
each priority alone must be able to take the whole target, so every mapping gets the whole
concurrency (at most ``MAPPING_MAX``, Lambda's range for SQS). The mappings draw from one
function, and Lambda throttles a mapping whose function has no concurrency left: throttled
messages come back with their receive count raised and a job can reach its DLQ that way.
So the reserved concurrency is the mappings' sum (AWS: reserved >= the sum of the SQS
mappings' maximum concurrency), plus one for the hourly budget-pause resume invocation.

The AWS figures (Lambda developer guide, "Configuring scaling behavior for SQS event
source mappings", "Lambda quotas", "Lambda scaling behavior"; DynamoDB developer guide,
"DynamoDB maximum throughput for on-demand tables"; SQS "standard queue quotas") are the
constants below. Without a target nothing is raised: the mappings keep
``priorities.P.max_concurrency`` and the function reserves nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from chatbatch.core.config import Config, Priority

MAPPING_MIN = 2  # ScalingConfig.MaximumConcurrency: 2..1,000
MAPPING_MAX = 1_000
LAMBDA_ACCOUNT_CONCURRENCY = 1_000  # "Concurrent executions", default quota per Region
UNRESERVED_MIN = 100  # Lambda keeps this many executions unreserved in the account
LAMBDA_SCALE_PER_10_S = 1_000  # new execution environments per function every 10 s
TABLE_WRU_S = 40_000  # on-demand table-level write throughput, default quota
SQS_IN_FLIGHT = 120_000  # received, not yet deleted, per standard queue (approximate)
INVOCATION_OVERHEAD_S = 0.5  # state reads, group reserve and settle, the S3 flush, deletes
CONCURRENCY_HEADROOM = 2.0  # concurrency asked for / what typical answers need
RESUME_INVOCATIONS = 1  # the hourly budget-pause resume (EventBridge -> the worker)
# Write units every job costs the table over all its items (job state, reservation, ledger,
# markers, counters, limiter), rounded up from bench/bench_hot_items.py: 8.6 in 300 jobs
# of 4 batches (2026-12-02), 9.5 in 40 (a batch's own writes spread over fewer jobs)
TABLE_WRU_PER_JOB = 10.0


@dataclass(frozen=True)
class Quota:
    """An AWS quota the plan depends on: its default, and what the target needs of it."""

    name: str
    default: int
    needed: int
    note: str

    @property
    def raise_needed(self) -> bool:
        return self.needed > self.default


@dataclass(frozen=True)
class Sizing:
    """The worker's concurrency for one config (``target_jobs_per_s`` None: as configured)."""

    target_jobs_per_s: float | None
    batch_size: int
    invocation_s: float  # one invocation: an answer plus its overhead
    concurrency: int | None  # invocations at once the target needs, with headroom
    mappings: dict[Priority, int]  # each event source mapping's MaximumConcurrency
    reserved: int | None  # the function's reserved concurrency (None: none set)
    quotas: tuple[Quota, ...]

    def jobs_per_s(self, concurrency: int) -> float:
        """What ``concurrency`` invocations take at typical answers (no headroom)."""
        return concurrency * self.batch_size / self.invocation_s

    @property
    def one_priority_ceiling(self) -> float:
        """Jobs/s the smallest mapping takes when its priority is the only one with jobs."""
        return self.jobs_per_s(min(self.mappings.values()))

    @property
    def ceiling(self) -> float:
        """Jobs/s of every mapping at its maximum, within the function's concurrency (its
        reservation, else the account's default quota, shared with its other functions)."""
        room = self.reserved or LAMBDA_ACCOUNT_CONCURRENCY
        return self.jobs_per_s(min(sum(self.mappings.values()), room))


def concurrency_for(jobs_per_s: float, batch_size: int, invocation_s: float) -> int:
    """Little's law with ``CONCURRENCY_HEADROOM``: invocations running at once."""
    return math.ceil(jobs_per_s / batch_size * invocation_s * CONCURRENCY_HEADROOM)


def worker_sizing(config: Config) -> Sizing:
    target = config.scale.target_jobs_per_s
    batch = config.worker.batch_size
    invocation_s = config.scale.answer_s + INVOCATION_OVERHEAD_S
    configured = {p: config.priorities[p].max_concurrency for p in Priority}
    if target is None:
        return Sizing(None, batch, invocation_s, None, configured, None, ())
    needed = concurrency_for(target, batch, invocation_s)
    # the target may only raise what the config asks for
    mappings = {p: max(c, min(MAPPING_MAX, needed)) for p, c in configured.items()}
    reserved = sum(mappings.values()) + RESUME_INVOCATIONS
    quotas = (
        Quota(
            "Lambda concurrent executions (per Region)",
            LAMBDA_ACCOUNT_CONCURRENCY,
            reserved + UNRESERVED_MIN,
            f"the worker reserves {reserved:,}; Lambda keeps {UNRESERVED_MIN} unreserved",
        ),
        Quota(
            "DynamoDB table-level write throughput, on demand (WRU/s)",
            TABLE_WRU_S,
            math.ceil(target * TABLE_WRU_PER_JOB),
            f"~{TABLE_WRU_PER_JOB:g} write units per job over all its items",
        ),
        Quota(
            "SQS in-flight messages per standard queue",
            SQS_IN_FLIGHT,
            math.ceil(target * invocation_s),
            "one priority alone at the target; standard queues have no throughput quota",
        ),
    )
    return Sizing(target, batch, invocation_s, needed, mappings, reserved, quotas)
