"""The worker's metrics out as EMF: one blob per (model, priority), and service totals.

What is emitted, with which unit and dimensions, is the contract in ``core/metrics.py``,
which the stack's dashboard and alarms read too.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit

from chatbatch.core.metrics import METRICS, NAMESPACE, SERVICE, Metric
from chatbatch.core.pricing import from_nanos

if TYPE_CHECKING:
    from chatbatch.worker.invocation import Invocation


def _unit(metric: Metric) -> MetricUnit:
    return MetricUnit(METRICS[metric].unit)


def _metric_values(inv: Invocation) -> dict[tuple[str, str], dict[Metric, float]]:
    groups: dict[tuple[str, str], dict[Metric, float]] = defaultdict(dict)
    for (metric, model, priority), value in inv.tallies.items():
        # the cost is tallied in nanodollars (exact) and emitted in USD
        usd = metric is Metric.COST_USD
        groups[(model, priority)][metric] = float(from_nanos(value)) if usd else value
    return groups


def emit_metrics(inv: Invocation) -> None:
    """EMF: one blob per (model, priority), and the service-level totals alarms watch."""
    groups = _metric_values(inv)
    totals: dict[Metric, float] = defaultdict(float)
    for (model, priority), values in groups.items():
        metrics = EphemeralMetrics(namespace=NAMESPACE, service=SERVICE)
        metrics.add_dimension("model", model)
        metrics.add_dimension("priority", priority)
        for metric, value in values.items():
            metrics.add_metric(name=metric.value, unit=_unit(metric), value=value)
            if METRICS[metric].service_level:
                totals[metric] += value
        for ms in inv.latencies.get((model, priority), []):
            metrics.add_metric(name=Metric.LATENCY.value, unit=_unit(Metric.LATENCY), value=ms)
        metrics.flush_metrics()
    if totals:
        service = EphemeralMetrics(namespace=NAMESPACE, service=SERVICE)
        for metric, value in totals.items():
            service.add_metric(name=metric.value, unit=_unit(metric), value=value)
        service.flush_metrics()
