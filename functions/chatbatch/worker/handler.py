"""The Lambda handler: one for all four priority queues. Thin on purpose.

It decodes the batch, prefetches every job's state in one read, runs the jobs
concurrently (``pipeline.process``) with Powertools' async batch processor and returns a
partial batch response, so one bad job never fails its neighbours. Metrics go out as
EMF, one blob per (model, priority).

A worker instance's services (config, AWS clients, the provider's connection pool, the
event loop) are built once and reused across invocations. They are per thread: Lambda
runs one invocation per instance at a time, and the local event-source emulator runs
each emulated instance in its own thread.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import defaultdict
from functools import cache
from typing import Any

import boto3
from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit
from aws_lambda_powertools.utilities.batch import (
    AsyncBatchProcessor,
    EventType,
    async_process_partial_response,
)
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.parameters import get_secret
from aws_lambda_powertools.utilities.typing import LambdaContext

from chatbatch.core.config import Priority, load_config
from chatbatch.core.pricing import from_nanos
from chatbatch.core.resources import Resources
from chatbatch.provider.client import ProviderClient
from chatbatch.state.batches import Batches
from chatbatch.state.budget import Budget
from chatbatch.state.limiter.limiter import RateLimiter
from chatbatch.state.store import Store
from chatbatch.worker.capacity import Capacity
from chatbatch.worker.intake import Intake, read_record
from chatbatch.worker.pipeline import (
    SAFETY_MARGIN_S,
    Invocation,
    Outcome,
    RetryLater,
    Services,
    WorkerCrash,
    crash_point,
    process,
    reserve_ahead,
)
from chatbatch.worker.tracing import Span, tracer

logger = Logger(service="chatbatch")
SECRET_ENV_PREFIX = "CHATBATCH_SECRET_"
FALLBACK_KEY_ENVS = ("CHATBATCH_API_KEY", "OPENAI_API_KEY")


def secret_env(provider: str) -> str:
    return SECRET_ENV_PREFIX + "".join(c if c.isalnum() else "_" for c in provider.upper())


def api_key(provider: str) -> str | None:
    """Deployed: the provider's Secrets Manager secret (cached 5 min); locally: env vars."""
    arn = os.environ.get(secret_env(provider))
    if arn:
        return str(get_secret(arn, max_age=300)).strip()  # a secret saved from a file ends in \n
    env = load_config_cached().providers[provider].api_key_env
    for name in (env, *FALLBACK_KEY_ENVS):
        if os.environ.get(name, "").strip():
            return os.environ[name].strip()
    return None


@cache
def load_config_cached() -> Any:
    return load_config()


def build_services() -> Services:
    config = load_config_cached()
    resources = Resources.from_env()
    ddb = boto3.client("dynamodb")
    batches = Batches(ddb, resources.table)
    limiter = RateLimiter(ddb, resources.table, config)
    provider = ProviderClient(config, api_key, on_attempt=limiter.observe_attempt)
    return Services(
        config=config,
        resources=resources,
        store=Store(boto3.client("s3"), resources.bucket),
        batches=batches,
        budget=Budget(ddb, resources.table, config),
        limiter=limiter,
        provider=provider,
        sqs=boto3.client("sqs"),
    )


class Instance:
    """One worker instance: services, an event loop and a batch processor, reused."""

    def __init__(self) -> None:
        self.services = build_services()
        self.loop = asyncio.new_event_loop()
        self.processor = AsyncBatchProcessor(
            event_type=EventType.SQS, raise_on_entire_batch_failure=False
        )

    def handle(self, event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
        services = self.services
        records = [SQSRecord(r) for r in event.get("Records", [])]
        intakes = {
            r.message_id: read_record(r, services.config, services.resources, services.store)
            for r in records
        }
        states, batches = services.batches.prefetch(i.key for i in intakes.values())
        remaining_s = context.get_remaining_time_in_millis() / 1000
        priority = next(iter(intakes.values())).priority if intakes else Priority.normal
        inv = Invocation(
            services=services,
            intakes=intakes,
            states=states,
            batches=batches,
            deadline=time.monotonic() + remaining_s - SAFETY_MARGIN_S,
            capacity=Capacity(services.limiter, priority, len(intakes)),
            trace=Span.current(),
        )
        reserve_ahead(inv)

        async def record_handler(record: SQSRecord) -> str:
            intake = inv.intakes[record.message_id]
            try:
                outcome = await process(inv, intake)
            finally:
                inv.done(intake)
            _log_outcome(intake, outcome)
            return outcome.value

        asyncio.set_event_loop(self.loop)
        response = async_process_partial_response(
            event=event, record_handler=record_handler, processor=self.processor, context=context
        )
        try:
            self.loop.run_until_complete(inv.capacity.close())
        except Exception:  # the give-back is an optimisation: never fail the batch for it
            logger.exception("could not give back unused rate-limit capacity")
        for intake in intakes.values():
            crash_point("before_delete", intake)
        emit_metrics(inv)
        return dict(response)

    def die(self) -> None:
        """After a (simulated) crash: nothing of this instance survives."""
        for task in asyncio.all_tasks(self.loop):
            task.cancel()
        self.loop.run_until_complete(asyncio.sleep(0))
        self.loop.close()


def _log_outcome(intake: Intake, outcome: Outcome) -> None:
    if outcome is not Outcome.succeeded:
        logger.info(
            f"job {outcome.value}",
            extra={
                "batch_id": intake.batch_id,
                "custom_id": intake.custom_id,
                "priority": intake.priority.value,
            },
        )


SERVICE_LEVEL = ("JobsSucceeded", "JobsFailed", "CostUSD")


def _unit(name: str) -> MetricUnit:
    return MetricUnit.NoUnit if name == "CostUSD" else MetricUnit.Count


def _metric_values(inv: Invocation) -> dict[tuple[str, str], dict[str, float]]:
    groups: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    for (name, model, priority), value in inv.tallies.items():
        if name == "CostNanos":
            groups[(model, priority)]["CostUSD"] = float(from_nanos(value))
        else:
            groups[(model, priority)][name] = value
    return groups


def emit_metrics(inv: Invocation) -> None:
    """EMF: one blob per (model, priority), and the service-level totals alarms watch."""
    groups = _metric_values(inv)
    totals: dict[str, float] = defaultdict(float)
    for (model, priority), values in groups.items():
        metrics = EphemeralMetrics(namespace="chatbatch", service="chatbatch")
        metrics.add_dimension("model", model)
        metrics.add_dimension("priority", priority)
        for name, value in values.items():
            metrics.add_metric(name=name, unit=_unit(name), value=value)
            if name in SERVICE_LEVEL:
                totals[name] += value
        for ms in inv.latencies.get((model, priority), []):
            metrics.add_metric(name="Latency", unit=MetricUnit.Milliseconds, value=ms)
        metrics.flush_metrics()
    if totals:
        service = EphemeralMetrics(namespace="chatbatch", service="chatbatch")
        for name, value in totals.items():
            service.add_metric(name=name, unit=_unit(name), value=value)
        service.flush_metrics()


_instances = threading.local()


def instance() -> Instance:
    current = getattr(_instances, "instance", None)
    if current is None:
        current = _instances.instance = Instance()
    return current


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    current = instance()
    try:
        return current.handle(event, context)
    except WorkerCrash:
        _instances.instance = None
        current.die()
        raise


__all__ = ["RetryLater", "handler"]
