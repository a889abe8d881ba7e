"""Calls the provider may have billed whose answer was never read: booked at their worst case.

A call is sent under a reservation of its worst case, and the reservation is marked
(``Budget.arm``) just before it goes. When the answer cannot be read (``maybe_billed``: cut,
corrupt, a reset or a timeout after the request left), or the worker died with the call in
flight and a later copy of the job finds the marked reservation and no stored result, the
provider may have billed the call and we do not know what for. ``book`` books it at the
reservation, which is that worst case: a cost record of its own (``usage_estimated``,
keyed by the reservation's id, so a retry of the booking writes the same object), then
one transaction that gives the reservation back with its worst case spent and adds the
call to the batch's counters. Another call needs a new reservation (``pipeline``), so the
budget still holds every call before it is sent: booked >= billed, never past a limit.
"""

from __future__ import annotations

from aws_lambda_powertools import Logger

from chatbatch.core.jobs import Job
from chatbatch.core.metrics import Metric
from chatbatch.state.budget.reservations import Reservation
from chatbatch.worker.crash import crash_point
from chatbatch.worker.intake import Intake
from chatbatch.worker.invocation import Invocation, io
from chatbatch.worker.results import estimated_counters, record_of

logger = Logger(service="chatbatch")


async def book(inv: Invocation, intake: Intake, job: Job, r: Reservation, why: str) -> bool:
    """Book the call made under ``r`` at its worst case and give ``r`` back. False when
    ``r`` was no longer held (reclaimed meanwhile: the reclaim booked it in the ledger)."""
    services = inv.services
    usage = job.worst_case_usage(services.config.models[job.model])
    record = record_of(inv, intake, job, usage, r.nanos, r.day, usage_estimated=True, attempt=r.rid)
    await io(services.store.put_cost, record)
    crash_point("after_unread_record", intake)
    shard = inv.counter_shard(intake.batch_id)
    counters = services.batches.count_items(intake.batch_id, estimated_counters(r.nanos), shard)
    booked = await io(services.budget.release, r, spent_nanos=r.nanos, extra=counters)
    logger.warning(
        "a call the provider may have billed was booked at its worst case",
        extra={
            "batch_id": intake.batch_id,
            "custom_id": intake.custom_id,
            "model": job.model,
            "cost_usd": str(record.cost_usd),
            "why": why,
            "booked": booked,
        },
    )
    if booked:
        inv.count(Metric.ESTIMATED_CALLS, intake)
        inv.count(Metric.COST_USD, intake, r.nanos)
    return bool(booked)
