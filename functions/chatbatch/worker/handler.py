"""The Lambda handler: one for all four priority queues. Thin on purpose.

The resume schedule's event (``RESUME_EVENT``) goes to ``budget_pause.resume_if_due``.
Otherwise it decodes the batch, prefetches every job's state in one read, runs the jobs
concurrently (``pipeline.process``) with Powertools' async batch processor and returns a
partial batch response, so one bad job never fails its neighbours. Metrics go out as
EMF, one blob per (model, priority) (``emf.py``).

A worker instance's services (``services.py``: config, AWS clients, the provider's
connection pool) and its event loop are built once and reused across invocations. They
are per thread: Lambda runs one invocation per instance at a time, and the local
event-source emulator runs each emulated instance in its own thread.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.batch import (
    AsyncBatchProcessor,
    EventType,
    async_process_partial_response,
)
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from chatbatch.core.config import Priority
from chatbatch.core.resources import RESUME_EVENT
from chatbatch.worker import completion, producers
from chatbatch.worker.budget_pause import resume_if_due
from chatbatch.worker.capacity import Capacity
from chatbatch.worker.crash import WorkerCrash, crash_point
from chatbatch.worker.emf import emit_metrics
from chatbatch.worker.finals import Finals
from chatbatch.worker.intake import Intake, read_record
from chatbatch.worker.invocation import Invocation, Outcome, RetryLater
from chatbatch.worker.pipeline import SAFETY_MARGIN_S, process, reserve_ahead
from chatbatch.worker.services import build_services, io_pool
from chatbatch.worker.tracing import Span, tracer

logger = Logger(service="chatbatch")


class Instance:
    """One worker instance: services, an event loop and a batch processor, reused."""

    def __init__(self) -> None:
        self.services = build_services()
        self.loop = asyncio.new_event_loop()
        self.loop.set_default_executor(io_pool(self.services.config))
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
        intakes = producers.screen(intakes, batches, {services.principal, *services.trusted})
        remaining_s = context.get_remaining_time_in_millis() / 1000
        priority = next(iter(intakes.values())).priority if intakes else Priority.normal
        inv = Invocation(
            services=services,
            intakes=intakes,
            states=states,
            batches=batches,
            deadline=time.monotonic() + remaining_s - SAFETY_MARGIN_S,
            capacity=Capacity(services.limiter, priority, len(intakes)),
            finals=Finals(services, intakes),
            trace=Span.current(),
        )
        reserve_ahead(inv)
        outcomes: dict[str, Outcome] = {}

        async def record_handler(record: SQSRecord) -> str:
            intake = inv.intakes[record.message_id]
            try:
                outcome = await process(inv, intake)
            finally:
                inv.done(intake)
            outcomes[record.message_id] = outcome
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
        try:
            self.loop.run_until_complete(inv.finals.end(inv.reserved.values()))
        except Exception:  # what it leaves, ``reclaim`` closes: never fail the batch for it
            logger.exception("could not close the invocation's reservations marker")
        reply = completion.announce(services, intakes, outcomes, dict(response))
        for intake in intakes.values():
            crash_point("before_delete", intake)
        emit_metrics(inv)
        return reply

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
    if event == RESUME_EVENT:  # the resume schedule (a paused pipeline's day may be over)
        return {"resumed": resume_if_due(current.services)}
    try:
        return current.handle(event, context)
    except WorkerCrash:
        _instances.instance = None
        current.die()
        raise


__all__ = ["RetryLater", "handler"]
