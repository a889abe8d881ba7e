"""What a local run reports: its ``Summary``, and the AWS calls counted for it."""

from __future__ import annotations

import datetime as dt
import statistics
import threading
from collections import Counter
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, field_serializer

from chatbatch.client.submit import Plan
from chatbatch.core.pricing import from_nanos
from chatbatch.local import sessions
from chatbatch.local.simulator import Stats
from chatbatch.state.batches import BatchInfo


class Summary(BaseModel):
    """``summary.json`` and ``local run --json``: the batch's counts, tokens and cost
    (money as exact decimal strings), and this run's figures."""

    batch_id: str
    jobs_total: int
    succeeded: int
    failed: int
    deferred: int
    paused: int
    dead_lettered: int
    cancelled: int
    invalid_lines: int
    prompt_tokens: int  # billed: response-cache hits are in cached_jobs, cache_saved_tokens
    completion_tokens: int
    cached_jobs: int
    cache_saved_tokens: int
    cost_usd: Decimal
    estimated_calls: int  # calls booked at their worst case (no usage read), in cost_usd
    estimated_usd: Decimal
    wall_s: float
    jobs_per_s: float
    provider_calls: int
    provider_429s: int | None
    retries: int
    p50_latency_ms: float | None
    p99_latency_ms: float | None
    aws_requests: dict[str, dict[str, int]]
    aws_requests_per_job: float
    # a resumed run: the jobs already final when it started (their answers kept, not paid
    # again); wall_s, jobs_per_s, provider_calls, provider_429s and aws_requests are this
    # run's, the counts, tokens and cost the batch's over every run
    resumed_jobs: int = 0
    interrupted: bool = False  # stopped early (Ctrl-C, SIGTERM): the counts so far
    # the pipeline paused for the day's budget: until when (ISO 8601, UTC), and the jobs
    # still queued, never received (they run when it resumes; their lines say ``deferred``)
    budget_paused_until: str | None = None
    queued: int = 0
    # DynamoDB writes refused for a hot item (``local run --throttle-wcu-s``; None: no limit)
    ddb_writes_throttled: int | None = None

    @field_serializer("cost_usd", "estimated_usd")
    def _usd(self, value: Decimal) -> str:
        return str(value)


class AwsCallCounter:
    """Counts AWS API calls by service and operation through botocore's event hooks."""

    def __init__(self) -> None:
        self.calls: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()

    def __call__(self, model: Any, **_: Any) -> None:
        key = (model.service_model.service_name, model.name)
        with self._lock:
            self.calls[key] += 1

    def install(self) -> None:
        """Counts the calls of a fresh default session (``local/sessions``)."""
        sessions.install().register("before-call", self)

    def by_service(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for (service, op), n in sorted(self.calls.items()):
            out.setdefault(service, {})[op] = n
        return out


def summarize(
    plan: Plan,
    info: BatchInfo,
    wall: float,
    latencies: list[int],
    retries: int,
    *,
    stats: Stats | None,
    aws: dict[str, dict[str, int]],
    kept: int = 0,
    paused_until: float | None = None,
    ddb_throttled: int | None = None,
) -> Summary:
    """The batch's counts and cost, throughput, latencies, provider calls (from the
    simulator's ``stats`` when it ran) and the ``aws`` calls by service; ``kept``: the
    jobs already final when a resumed run started (not in its throughput)."""
    total = plan.valid + plan.invalid
    ran = total - kept
    aws_total = sum(sum(ops.values()) for ops in aws.values())
    return Summary(
        batch_id=plan.batch_id,
        jobs_total=total,
        succeeded=info.succeeded,
        failed=info.failed + plan.invalid,
        deferred=info.deferred,
        paused=info.paused,
        dead_lettered=info.dead_lettered,
        cancelled=info.cancelled_jobs,
        invalid_lines=plan.invalid,
        prompt_tokens=info.prompt_tokens,
        completion_tokens=info.completion_tokens,
        cached_jobs=info.cached_jobs,
        cache_saved_tokens=info.cache_saved_tokens,
        cost_usd=from_nanos(info.cost_nanos),
        estimated_calls=info.estimated_calls,
        estimated_usd=from_nanos(info.estimated_nanos),
        wall_s=round(wall, 3),
        jobs_per_s=round(ran / wall, 2) if wall else 0.0,
        provider_calls=stats.requests if stats else info.provider_calls,
        provider_429s=stats.by_status.get("429", 0) if stats else None,
        retries=retries,
        p50_latency_ms=_percentile(latencies, 50),
        p99_latency_ms=_percentile(latencies, 99),
        aws_requests=aws,
        aws_requests_per_job=round(aws_total / ran, 2) if ran else 0.0,
        resumed_jobs=kept,
        budget_paused_until=(
            None
            if paused_until is None
            else dt.datetime.fromtimestamp(paused_until, dt.UTC).isoformat(timespec="seconds")
        ),
        queued=max(0, plan.valid - info.finished - info.waiting),
        ddb_writes_throttled=ddb_throttled,
    )


def _percentile(values: list[int], pct: int) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return float(values[0])
    return round(statistics.quantiles(values, n=100, method="inclusive")[pct - 1], 1)
