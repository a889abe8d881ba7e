"""After an invocation: announce the batches it completed, once ("Batch Completed").

Every invocation in which a job of a batch ended (or a redelivery found it ended) reads the
batch's counters once (a consistent read, after its own transactions), so the worker whose
transaction moved the last counter always sees the batch complete. Of the workers that do,
one wins the conditional claim (``state.completion``), puts the event, then marks it sent.
A put that fails gives the claim back and sends the batch's records back to their queue:
their redelivery (jobs already final: ``duplicate``) looks again. A crash between the put
and the mark leaves a claim that goes stale after ``CLAIM_LEASE_S``; the redelivery then
puts the event again, with the same ``event_id`` (at least once; consumers dedupe on it).
A mark that fails after a put is only logged: the records are not sent back for it.
See docs/events.md.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from typing import Any

from aws_lambda_powertools import Logger

from chatbatch.core.events import BATCH_COMPLETED, SOURCE, BatchCompleted
from chatbatch.core.pricing import from_nanos
from chatbatch.state.batches import BatchInfo
from chatbatch.state.completion import due
from chatbatch.state.store import errors_prefix, results_prefix
from chatbatch.worker.intake import Intake
from chatbatch.worker.invocation import Outcome
from chatbatch.worker.services import Services

logger = Logger(service="chatbatch")

# outcomes after which the job's batch may be complete (``duplicate``: a redelivery of a
# final job, which looks again when an earlier announcement failed)
ENDED = frozenset(
    {Outcome.succeeded, Outcome.failed, Outcome.cancelled, Outcome.dead_lettered, Outcome.duplicate}
)


class EventNotPut(RuntimeError):
    """EventBridge refused the entry (``FailedEntryCount``)."""


def detail_of(info: BatchInfo, bucket: str, now: float) -> BatchCompleted:
    """The event's detail: the batch's final counts, cost and where its outputs are."""
    assert info.total is not None
    return BatchCompleted(
        event_id=f"{info.batch_id}#{info.retried}",
        batch_id=info.batch_id,
        completion=info.retried,
        total=info.total,
        succeeded=info.succeeded,
        failed=info.failed,
        cancelled=info.cancelled_jobs,
        dead_lettered=info.dead_lettered,
        cost_usd=from_nanos(info.cost_nanos),
        cost_nanos=info.cost_nanos,
        prompt_tokens=info.prompt_tokens,
        completion_tokens=info.completion_tokens,
        provider_calls=info.provider_calls,
        results=f"s3://{bucket}/{results_prefix(info.batch_id)}",
        errors=f"s3://{bucket}/{errors_prefix(info.batch_id)}",
        created=info.created,
        completed_at=now,
    )


def put_event(services: Services, detail: BatchCompleted) -> None:
    entry = {
        "Source": SOURCE,
        "DetailType": BATCH_COMPLETED,
        "Detail": detail.model_dump_json(),
        "EventBusName": services.config.events.bus,
        "Resources": [],
    }
    reply = services.events.put_events(Entries=[entry])
    if reply.get("FailedEntryCount"):
        raise EventNotPut(json.dumps(reply.get("Entries", [])))


def announce_one(services: Services, batch_id: str) -> bool:
    """Put the batch's event if it is complete and nobody else has; True if put now."""
    info = services.batches.get(batch_id)
    if info is None or not due(info):
        return False
    claimed_at = time.time()
    if not services.completions.claim(info, claimed_at):
        return False
    try:
        put_event(services, detail_of(info, services.resources.bucket, claimed_at))
    except Exception:
        services.completions.release(batch_id, info.retried, claimed_at)
        raise
    try:
        services.completions.sent(batch_id, info.retried, time.time())
    except Exception:  # the event is out: sending the records back would put it again
        logger.exception(
            "completion event put but not marked sent: a redelivery after the claim's "
            "lease would put it again (same event_id)",
            extra={"batch_id": batch_id},
        )
    logger.info("batch completed", extra={"batch_id": batch_id, "completion": info.retried})
    return True


def announce(
    services: Services,
    intakes: Mapping[str, Intake],
    outcomes: Mapping[str, Outcome],
    response: dict[str, Any],
) -> dict[str, Any]:
    """Announce the batches this invocation may have completed; the partial batch
    ``response``, with the records of a batch whose announcement failed added (they come
    back, and their redelivery looks again)."""
    if not services.config.events.enabled:
        return response
    ended = _ended(intakes, outcomes)
    unannounced: set[str] = set()
    for batch_id in ended:
        try:
            announce_one(services, batch_id)
        except Exception:
            logger.exception(
                "could not announce the batch's completion", extra={"batch_id": batch_id}
            )
            unannounced.add(batch_id)
    if not unannounced:
        return response
    failures = list(response.get("batchItemFailures", []))
    listed = {f["itemIdentifier"] for f in failures}
    failures += [
        {"itemIdentifier": message_id}
        for message_id, intake in intakes.items()
        if intake.batch_id in unannounced and message_id not in listed
    ]
    return {**response, "batchItemFailures": failures}


def _ended(intakes: Mapping[str, Intake], outcomes: Mapping[str, Outcome]) -> Iterable[str]:
    return dict.fromkeys(intakes[m].batch_id for m, outcome in outcomes.items() if outcome in ENDED)
