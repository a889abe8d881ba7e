"""Only named producers write a batch: each message is checked against its batch's
registrant before anything of the job is read or reserved.

A registered batch (``Batches.register`` recorded the registrant's principal id) accepts
messages from its registrant (any session of the same role or user) and from the pipeline
itself: the workers (hand-backs re-send jobs) and the batch route's gatherer (it sends
jobs back to the synchronous path), whose role id the stack gives the worker in
``CHATBATCH_TRUSTED_SENDERS``. A batch nobody registered accepts messages only if
it is a ``daily-*`` batch (any producer the queue policy lets send may use those). Any
other message is refused: an error record under ``refused/<batch>/<message id>.json``,
never the job's own record or state, so the job it named still runs when its registrant
sends it; counted (``MessagesRefused``), logged with the sender's id, and deleted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection

from aws_lambda_powertools import Logger

from chatbatch.core.metrics import Metric
from chatbatch.core.output_lines import OutputLine
from chatbatch.core.principals import principal_id
from chatbatch.state.batches import BatchInfo
from chatbatch.worker.intake import Intake
from chatbatch.worker.invocation import Invocation, Outcome, io

DAILY_PREFIX = "daily-"
REFUSED = "refused_sender"
logger = Logger(service="chatbatch")


def refusal(intake: Intake, info: BatchInfo, worker: str | Collection[str]) -> str | None:
    """Why ``intake``'s sender may not write its batch (``worker``: the pipeline's own
    principal ids: the worker's, and the gatherer's that sends jobs back to the
    synchronous path), or None when it may."""
    ours = {worker} if isinstance(worker, str) else set(worker)
    batch, sender = intake.batch_id, intake.sender_id
    if info.registrant is None:
        if batch.startswith(DAILY_PREFIX):
            return None
        return (
            f"batch {batch!r} is not registered, and only daily-* batches are created by "
            f"messages (sender {sender}): send it with `chatbatch submit`, or leave batch_id "
            "out to join the day's batch"
        )
    if sender and (principal_id(sender) == info.registrant or principal_id(sender) in ours):
        return None
    return (
        f"batch {batch!r} was registered by {info.registrant}; this message came from "
        f"{sender or 'an unknown sender'}, which may not write it: only the registrant "
        "sends a batch's jobs"
    )


def screen(
    intakes: dict[str, Intake], batches: dict[str, BatchInfo], worker: str | Collection[str]
) -> dict[str, Intake]:
    """The intakes, each one its sender may not write marked ``refused`` (and holding no
    job: nothing is reserved for it)."""
    screened = {}
    for message_id, intake in intakes.items():
        reason = refusal(intake, batches[intake.batch_id], worker)
        refused = dataclasses.replace(intake, job=None, error=None, refused=reason)
        screened[message_id] = refused if reason else intake
    return screened


async def refuse(inv: Invocation, intake: Intake) -> Outcome:
    """Record a refused message under its own key, count and log it; it is deleted (also
    when the record cannot be written: its log line and count remain)."""
    assert intake.refused is not None
    message_id = intake.record.message_id
    line = OutputLine.failure(intake.batch_id, intake.custom_id, REFUSED, intake.refused)
    try:
        await io(inv.services.store.put_refused, intake.batch_id, message_id, line)
    except Exception:  # never retried nor dead-lettered: that would file it as the job's
        logger.exception("could not record a refused message", extra={"message_id": message_id})
    inv.count(Metric.MESSAGES_REFUSED, intake)
    logger.warning(
        "message refused: its sender may not write the batch",
        extra={
            "batch_id": intake.batch_id,
            "custom_id": intake.custom_id,
            "sender_id": intake.sender_id,
            "message_id": message_id,
        },
    )
    return Outcome.refused
