"""The metric contract: every CloudWatch metric chatbatch's functions emit, and how.

One list, read by both sides: the functions' EMF output (``worker/emf.py``; the batch
route's gatherer, ``chatbatch.batchroute``) and the stack's dashboard and alarms
(``infra/monitoring.py``, ``infra/batch_route.py``). Each metric names its ``emitter``.
They publish embedded-metric-format (EMF) metrics with Powertools Metrics in namespace
``NAMESPACE``; Powertools adds the ``service`` dimension to everything it emits:

- every worker metric in ``METRICS`` once per job, with dimensions ``model`` (the
  configured model name, e.g. ``deepseek-chat``) and ``priority`` (``critical`` ... ``low``);
- the metrics marked ``service_level`` once more with *only* the ``service`` dimension
  (``service=chatbatch``), because alarms cannot add up metrics across dimension values;
- the gatherer's metrics count provider batches, not jobs: each run emits them with only
  the ``service`` dimension (``service_level``), which is what its alarms watch.

``COST_USD`` is tallied in nanodollars (integers add up exactly) and emitted in USD.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

NAMESPACE = "chatbatch"
SERVICE = "chatbatch"
SERVICE_DIMENSION = "service"
JOB_DIMENSIONS = ("model", "priority")


class Metric(StrEnum):
    JOBS_SUCCEEDED = "JobsSucceeded"
    JOBS_FAILED = "JobsFailed"
    JOBS_DEAD_LETTERED = "JobsDeadLettered"
    JOBS_DEFERRED = "JobsDeferred"
    JOBS_THROTTLED = "JobsThrottled"
    JOBS_PAUSED = "JobsPaused"
    LATENCY = "Latency"
    PROVIDER_RATE_LIMITED = "ProviderRateLimited"
    PROVIDER_ERRORS = "ProviderErrors"
    RETRIES = "Retries"
    CACHE_HITS = "CacheHits"
    COST_USD = "CostUSD"
    PROMPT_TOKENS = "PromptTokens"
    COMPLETION_TOKENS = "CompletionTokens"
    ESTIMATED_CALLS = "EstimatedCalls"
    MESSAGES_REFUSED = "MessagesRefused"
    BATCH_ROUTE_OVERDUE = "BatchRouteOverdue"
    BATCH_ROUTE_FAILED = "BatchRouteFailed"


@dataclass(frozen=True)
class MetricSpec:
    unit: str  # the EMF / Powertools MetricUnit value
    meaning: str
    service_level: bool = False  # also emitted with only the `service` dimension
    # which function emits it: the worker (per job) or the batch route's gatherer
    emitter: Literal["worker", "gatherer"] = "worker"


METRICS: dict[Metric, MetricSpec] = {
    Metric.MESSAGES_REFUSED: MetricSpec(
        "Count", "messages refused: their sender may not write the batch they name", True
    ),
    Metric.JOBS_SUCCEEDED: MetricSpec("Count", "jobs that ended with a result", True),
    Metric.JOBS_FAILED: MetricSpec("Count", "jobs that ended with an error record", True),
    Metric.JOBS_DEAD_LETTERED: MetricSpec(
        "Count", "jobs given up after max_receive_count deliveries"
    ),
    Metric.JOBS_DEFERRED: MetricSpec("Count", "jobs handed back because the budget is used up"),
    Metric.JOBS_THROTTLED: MetricSpec("Count", "jobs handed back for want of rate-limit tokens"),
    Metric.JOBS_PAUSED: MetricSpec(
        "Count", "jobs handed back because their model is paused (account error)", True
    ),
    Metric.LATENCY: MetricSpec("Milliseconds", "chat API time of a job, retries included"),
    Metric.PROVIDER_RATE_LIMITED: MetricSpec("Count", "HTTP 429 answers from the provider"),
    Metric.PROVIDER_ERRORS: MetricSpec("Count", "provider calls that failed after their retries"),
    Metric.RETRIES: MetricSpec("Count", "provider calls retried"),
    Metric.CACHE_HITS: MetricSpec("Count", "jobs answered from the response cache"),
    Metric.COST_USD: MetricSpec("None", "settled cost in USD", True),
    Metric.PROMPT_TOKENS: MetricSpec("Count", "prompt tokens billed (cached ones included)"),
    Metric.COMPLETION_TOKENS: MetricSpec("Count", "completion tokens billed (reasoning included)"),
    Metric.ESTIMATED_CALLS: MetricSpec(
        "Count", "calls booked at their worst case: maybe billed, no usage read"
    ),
    Metric.BATCH_ROUTE_OVERDUE: MetricSpec(
        "Count", "provider batches open past their deadline", True, "gatherer"
    ),
    Metric.BATCH_ROUTE_FAILED: MetricSpec(
        "Count", "provider batches that failed or were cancelled", True, "gatherer"
    ),
}
