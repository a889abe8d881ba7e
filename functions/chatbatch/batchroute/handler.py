"""The gatherer's Lambda handler (EventBridge, every ``GATHER_EVERY_MIN`` minutes; locally
a timer): one pass (``run``) over every part's record, then the queue (not while the
day's budget is spent: the budget pause, ``state/budget/pause.py``, as the worker's
queues are switched off). Its reserved
concurrency is 1, so no two passes overlap; each step is still safe to repeat after a
crash (``recover``). A part that fails (its provider unreachable, a file unreadable) is
logged and left for the next pass; the others go on.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit

from chatbatch.batchroute.clients import BatchClients
from chatbatch.batchroute.gather import Gathered, Gatherer
from chatbatch.batchroute.ingest import Ingested, Ingester
from chatbatch.batchroute.recover import recover
from chatbatch.core.metrics import METRICS, NAMESPACE, SERVICE, Metric
from chatbatch.core.pricing import from_nanos
from chatbatch.state.parts import PartState
from chatbatch.worker.services import Services, api_key, build_services

logger = Logger(service="chatbatch")


@dataclass
class Pass:
    """What one pass did."""

    gathered: Gathered = field(default_factory=Gathered)
    ingested: Ingested = field(default_factory=Ingested)
    errors: list[str] = field(default_factory=list)


def run(
    services: Services,
    clients: BatchClients,
    queue_url: str,
    clock: Callable[[], float] = time.time,
) -> Pass:
    """Recover the parts left ``creating``, ingest the ended ones, gather the queue."""
    done = Pass()
    parts = {p.part_id: p for p in services.parts.listed()}
    known = {p.provider_batch_id for p in parts.values() if p.provider_batch_id}
    ingester = Ingester(services, clients, clock)
    steps = {
        PartState.creating: lambda p: recover(services, clients, p, known, clock),
        PartState.open: ingester.poll,
        PartState.ingesting: ingester.ingest,
    }
    for part in parts.values():
        step = steps.get(part.state)
        if step is None:
            continue
        try:
            step(part)
        except Exception as err:  # the next pass tries again; the other parts go on
            logger.exception("a part's step failed", extra={"part": part.part_id})
            done.errors.append(f"part {part.part_id} ({part.state}): {err!r}")
    done.ingested = ingester.done
    if services.pause.get(fresh=True) is not None:  # the day's budget is spent: nothing
        return done  # to reserve with; the jobs wait on the queue, unreceived (no cycling)
    done.gathered = Gatherer(services, clients, queue_url, clock).gather(parts)
    return done


_local = threading.local()
CLOCK: Callable[[], float] = time.time  # a test moves the gatherer's time (deadlines)


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """One pass; its counts as the invocation's result."""
    if getattr(_local, "services", None) is None:
        _local.services = build_services()
        _local.clients = BatchClients(_local.services.config, api_key)
    services: Services = _local.services
    queue_url = services.resources.batch_queue
    if not queue_url:
        raise RuntimeError("the batch queue is not set (CHATBATCH_BATCH_QUEUE)")
    done = run(services, _local.clients, queue_url, CLOCK)
    emit(done.ingested)
    return {
        "parts_opened": len(done.gathered.parts),
        "jobs_gathered": done.gathered.jobs,
        "jobs_to_sync": done.gathered.to_sync + done.ingested.to_sync,
        "jobs_deferred": done.gathered.deferred,
        "parts_done": len(done.ingested.parts),
        "succeeded": done.ingested.succeeded,
        "failed": done.ingested.failed,
        "overdue": done.ingested.overdue,
        "failed_batches": done.ingested.failed_batches,
        "errors": done.errors,
    }


def emit(done: Ingested) -> None:
    """The pass's figures as service-level EMF metrics (the alarms watch the last two)."""
    metrics = EphemeralMetrics(namespace=NAMESPACE, service=SERVICE)
    figures = {
        Metric.JOBS_SUCCEEDED: done.succeeded,
        Metric.JOBS_FAILED: done.failed,
        Metric.COST_USD: float(from_nanos(done.cost_nanos)),
        Metric.BATCH_ROUTE_OVERDUE: done.overdue,
        Metric.BATCH_ROUTE_FAILED: done.failed_batches,
    }
    for metric, value in figures.items():
        metrics.add_metric(name=metric.value, unit=MetricUnit(METRICS[metric].unit), value=value)
    metrics.flush_metrics()
