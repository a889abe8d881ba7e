"""Sending a job back: handed back with a delay, retried with backoff, or dead-lettered.

A hand-back (budget used up, no rate-limit capacity soon, the model paused, another copy
at work) re-sends
the job as a new message and lets the original go, so it never counts toward the DLQ; the
copy keeps its batch and stays the owner of any reservation it holds. A transient provider
failure goes back to the queue with a backoff (the message's visibility), until its last
delivery, when the job is recorded as dead-lettered: in one place, ``pipeline.process``,
whatever ended that delivery (a provider error, S3 unreachable, any exception), once, with
that error's own text.
"""

from __future__ import annotations

import math
import time

from chatbatch.core.jobs import ATTR_BATCH
from chatbatch.core.metrics import Metric
from chatbatch.provider.errors import ProviderError
from chatbatch.state.batches import JobState
from chatbatch.state.budget.reservations import Reservation
from chatbatch.worker.intake import ATTR_FIRST_SENT, ATTR_HANDBACKS, ATTR_OWNER, Intake
from chatbatch.worker.invocation import Invocation, Outcome, RetryLater, io
from chatbatch.worker.results import fail

MAX_DELAY_S = 900  # SQS DelaySeconds limit
# What a handed-back job waits in, and the metric that counts it, by why it was handed back
WAITING = {
    Outcome.deferred: (JobState.deferred, Metric.JOBS_DEFERRED),
    Outcome.throttled: (JobState.throttled, Metric.JOBS_THROTTLED),
    Outcome.paused: (JobState.paused, Metric.JOBS_PAUSED),
}


def expiry(inv: Invocation, intake: Intake, now_s: float | None = None) -> str | None:
    """Why the job may wait no longer (handed back ``worker.max_handbacks`` times already,
    or first sent more than ``worker.max_job_age_s`` ago), or None."""
    worker = inv.services.config.worker
    if intake.handbacks >= worker.max_handbacks:
        return f"handed back {intake.handbacks} times (worker.max_handbacks)"
    first_ms = intake.first_sent_ms
    now = time.time() if now_s is None else now_s
    age_s = now - first_ms / 1000 if first_ms is not None else 0.0
    if age_s > worker.max_job_age_s:
        return f"first sent {age_s:.0f} s ago (worker.max_job_age_s {worker.max_job_age_s})"
    return None


async def expire(inv: Invocation, intake: Intake, why: str, held: Reservation | None) -> Outcome:
    """End a job that waited too long: an error record with OpenAI's code
    ``batch_expired``, ``failed``, counted once; a reservation it holds is settled at 0
    with it (``results.fail``)."""
    message = f"expired: {why}; send it again with `chatbatch retry` when it can run"
    if await fail(inv, intake, "batch_expired", message, reservation=held):
        inv.count(Metric.JOBS_FAILED, intake)
    return Outcome.failed


async def hand_back(
    inv: Invocation,
    intake: Intake,
    delay_s: float,
    outcome: Outcome,
    held: Reservation | None = None,
) -> Outcome:
    """Re-send the job with a delay and let the original go: never counts toward the DLQ.
    A job that may wait no longer (``expiry``) expires instead, releasing ``held``; a copy
    handed back because another copy is at work never does (that copy ends the job).
    A ``held`` the copy keeps, armed as it was made and never sent, is unarmed first: its
    next delivery takes it back rather than booking a call that never went out."""
    services = inv.services
    if outcome is not Outcome.elsewhere and (why := expiry(inv, intake)):
        return await expire(inv, intake, why, held)
    if held is not None and held.armed_unsent:  # kept, its call never sent: unarmed
        await io(services.budget.disarm, held)
    queue = services.resources.queues[intake.priority]
    attributes = {
        name: {"DataType": attr.data_type, "StringValue": attr.string_value or ""}
        for name, attr in intake.record.message_attributes.items()
        if attr.string_value is not None
    }
    attributes[ATTR_HANDBACKS] = {"DataType": "Number", "StringValue": str(intake.handbacks + 1)}
    # the copy keeps the batch it was given (a default batch is per day of first sending)
    attributes[ATTR_BATCH] = {"DataType": "String", "StringValue": intake.batch_id}
    # and stays the same copy: a reservation it holds is still its own
    attributes[ATTR_OWNER] = {"DataType": "String", "StringValue": intake.owner}
    # and keeps its age: when its first message was sent
    if (first_ms := intake.first_sent_ms) is not None:
        attributes[ATTR_FIRST_SENT] = {"DataType": "Number", "StringValue": str(first_ms)}
    await io(
        services.sqs.send_message,
        QueueUrl=queue,
        MessageBody=intake.record.body,
        DelaySeconds=max(0, min(MAX_DELAY_S, round(delay_s))),
        MessageAttributes=attributes,
    )
    if outcome is Outcome.elsewhere:  # the job's state is the other copy's to move
        return outcome
    prev = inv.states[intake.key]
    new, metric = WAITING[outcome]
    shard = inv.counter_shard(intake.batch_id)
    await io(
        services.batches.transition,
        intake.batch_id,
        intake.custom_id,
        prev=prev,
        new=new,
        shard=shard,
    )
    inv.count(metric, intake)
    return outcome


def redelivery_s(inv: Invocation, intake: Intake) -> float:
    """How long a failed job stays away: the call's own retries already backed off, so the
    first redelivery comes at once (``retries.base_s``); the next ones ``retries.max_backoff_s``
    x1, x4, x16 (30 s, 2 min, 8 min: the deliveries outlast an outage of ten minutes)."""
    retries = inv.services.config.retries
    if intake.receive_count <= 1:
        return retries.base_s
    return float(retries.max_backoff_s * 4 ** (intake.receive_count - 2))


def last_delivery(inv: Invocation, intake: Intake) -> bool:
    """After this delivery, SQS moves a message that comes back to the DLQ."""
    return intake.receive_count >= inv.services.config.worker.max_receive_count


async def dead_letter(inv: Invocation, intake: Intake, reason: str) -> None:
    """The last delivery failed: SQS moves the message to the DLQ at its next receive
    (made immediate here); record why now. Counted when the job's state moved (a copy
    that finds it moved already counts nothing)."""
    services = inv.services
    message = f"gave up after {intake.receive_count} deliveries: {reason}"
    if await fail(inv, intake, "dead_lettered", message, new=JobState.dead_lettered):
        inv.count(Metric.JOBS_DEAD_LETTERED, intake)
    await io(
        services.sqs.change_message_visibility,
        QueueUrl=services.resources.queues[intake.priority],
        ReceiptHandle=intake.record.receipt_handle,
        VisibilityTimeout=0,
    )


async def retry(inv: Invocation, intake: Intake, err: ProviderError) -> Outcome:
    """A transient failure: back to the queue with a backoff; on the last delivery,
    ``process`` dead-letters it with this error."""
    services = inv.services
    if last_delivery(inv, intake):
        raise RetryLater(str(err))
    delay = math.ceil(min(MAX_DELAY_S, max(redelivery_s(inv, intake), err.retry_after_s or 0)))
    await io(
        services.sqs.change_message_visibility,
        QueueUrl=services.resources.queues[intake.priority],
        ReceiptHandle=intake.record.receipt_handle,
        VisibilityTimeout=delay,
    )
    raise RetryLater(str(err))
