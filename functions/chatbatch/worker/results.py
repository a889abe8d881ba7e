"""How a job ends: its error record (with, for a job ``chatbatch retry`` can send again, the
message that carried it), or its result, cost record and one settle transaction.

The result and the cost record are lines of the invocation's flush objects, written with
the other jobs' (``worker/finals.py``); the DynamoDB transaction that moves the job's
state (and names that flush on it) also settles the budget and adds to the batch's
counters, so a cost is counted once or not at all, and the line it names is the result.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from decimal import Decimal
from typing import Any

from aws_lambda_powertools import Logger

from chatbatch.core.days import utc_day
from chatbatch.core.jobs import Job
from chatbatch.core.metrics import Metric
from chatbatch.core.output_lines import CostRecord, JobFacts, OutputLine
from chatbatch.core.pricing import Usage, to_nanos
from chatbatch.provider.errors import HttpAnswer
from chatbatch.state.batches import RETRY_FROM, JobState, TransactionRefused
from chatbatch.state.budget.reservations import Reservation
from chatbatch.state.ddb import s
from chatbatch.state.store import KeptRequest
from chatbatch.worker.finals import Final, Lines
from chatbatch.worker.intake import Intake
from chatbatch.worker.invocation import Invocation, Outcome, io, job_key

logger = Logger(service="chatbatch", child=True)


async def fail(
    inv: Invocation,
    intake: Intake,
    code: str,
    message: str,
    facts: JobFacts | None = None,
    new: JobState = JobState.failed,
    answer: HttpAnswer | None = None,
    reservation: Reservation | None = None,
) -> bool:
    """Write the job's error record and move its state (``failed`` unless told otherwise),
    keeping the error's code on the job; False when the job was no longer in the state read
    (another delivery moved it). The record is an error line (``code``, ``message``), or,
    for a call the provider refused with an HTTP answer, a line carrying that ``answer``
    (its status, ``x-request-id`` and body as sent; ``code`` stays on the job).

    A ``reservation`` the job still holds is settled at 0 in the same transaction, never
    released before it: a copy of the job that read its state before this one ended it
    then finds the job paid for (``AlreadySettled``) and calls nothing, where a released
    reservation would let it reserve anew and call (``chatbatch retry`` drops the settled
    reservation when it sends the job again).

    A job that can be sent again (``failed`` or ``dead_lettered``, and not an invalid
    line) also keeps the message that carried it, before its state moves: every job
    ``chatbatch retry`` finds failed has its request.
    """
    store = inv.services.store
    line = (
        OutputLine.failure(intake.batch_id, intake.custom_id, code, message, facts)
        if answer is None
        else OutputLine.answered(
            intake.batch_id, intake.custom_id, answer.status, answer.body, answer.request_id, facts
        )
    )
    writes = [io(store.put_error, intake.batch_id, line)]
    if new in RETRY_FROM and intake.error is None:
        kept = KeptRequest(
            batch_id=intake.batch_id,
            custom_id=intake.custom_id,
            priority=intake.priority,
            body=intake.record.body,
        )
        writes.append(io(store.put_request, kept))
    await asyncio.gather(*writes)
    services = inv.services
    settle = services.budget.settle_items(reservation, 0) if reservation else []
    fields = {"error_code": s(code)}
    try:
        moved = await _move(inv, intake, new, ENDS, extra=settle, fields=fields)
    except TransactionRefused:  # the reservation is no longer this copy's (reclaimed)
        return await _move(inv, intake, new, ENDS, fields=fields)
    if not moved and reservation:  # another delivery ended the job: its money goes back
        await io(services.budget.release, reservation)
    return moved


ENDS = frozenset(state for state in JobState if state.terminal)


async def _move(
    inv: Invocation, intake: Intake, new: JobState, stop: frozenset[JobState], **changes: Any
) -> bool:
    """Move the job to ``new`` from the state read, with ``changes`` (``transition``'s
    counters, extra items, fields). The read may be stale: when another copy of the job
    moved it since, to a state not in ``stop``, the job is still this delivery's to move,
    from that state. False when it stopped at a state in ``stop`` (nothing written)."""
    batches = inv.services.batches
    for _ in range(len(JobState)):  # each pass sees the state move on: bounded
        prev = inv.states[intake.key]
        if await io(
            batches.transition,
            intake.batch_id,
            intake.custom_id,
            prev=prev,
            new=new,
            shard=inv.counter_shard(intake.batch_id),
            **changes,
        ):
            return True
        [job] = await io(batches.jobs, intake.batch_id, [intake.custom_id])
        if job.state is prev or job.state in stop:
            return False
        inv.states[intake.key] = job.state
    return False


async def refuse(
    inv: Invocation,
    intake: Intake,
    code: str,
    message: str,
    facts: JobFacts | None = None,
    answer: HttpAnswer | None = None,
    reservation: Reservation | None = None,
) -> Outcome:
    """A permanent failure: an error record (``fail``), counted as failed (once: not when
    another copy had ended the job), never retried."""
    if await fail(inv, intake, code, message, facts, answer=answer, reservation=reservation):
        inv.count(Metric.JOBS_FAILED, intake)
    return Outcome.failed


def job_facts(
    intake: Intake, job: Job, usd: Decimal, latency_ms: int, attempts: int, cached: bool
) -> JobFacts:
    return JobFacts(
        batch_id=intake.batch_id,
        priority=intake.priority,
        model=job.model,
        role=job.role,
        cost_usd=usd,
        latency_ms=latency_ms,
        attempts=attempts,
        cached=cached,
        seq=job.seq,
        day=utc_day(),
    )


def cost_record(
    inv: Invocation, intake: Intake, job: Job, result: OutputLine, day: str
) -> CostRecord:
    """The cost record of a stored result: its usage, priced as the result says (a result
    that came without usage says its cost is the worst case: its record says so too)."""
    assert result.chatbatch is not None and result.response is not None
    facts = result.chatbatch
    model = inv.services.config.models[job.model]
    usage = (
        job.worst_case_usage(model)
        if facts.usage_estimated
        else Usage.from_api(result.response.body.get("usage"))
    )
    return record_of(
        inv,
        intake,
        job,
        usage,
        to_nanos(facts.cost_usd),
        day,
        cached=facts.cached,
        usage_estimated=facts.usage_estimated,
    )


def record_of(
    inv: Invocation,
    intake: Intake,
    job: Job,
    usage: Usage,
    nanos: int,
    day: str,
    *,
    cached: bool = False,
    usage_estimated: bool = False,
    attempt: str | None = None,
) -> CostRecord:
    """A cost record of ``job``: ``usage`` at ``nanos``, on ``day``'s partition."""
    return CostRecord.of(
        job,
        inv.services.config.models[job.model],
        batch_id=intake.batch_id,
        priority=intake.priority,
        usage=usage,
        nanos=nanos,
        day=day,
        cached=cached,
        usage_estimated=usage_estimated,
        attempt=attempt,
    )


async def finish(
    inv: Invocation,
    intake: Intake,
    job: Job,
    result: OutputLine,
    *,
    reservation: Reservation | None,
    provider_calls: int,
    extra_writes: Sequence[Awaitable[None]] = (),
    stored_in: str | None = None,
) -> Outcome:
    """Store the result and its cost record, then settle and count once, in one transaction
    with the job's state.

    The lines go into the invocation's flush objects (``Finals.commit`` writes them for
    all its jobs at once) unless ``stored_in`` names the flush whose objects hold them
    already (a job recovered after a crash: ``recover``). Of two deliveries of one job,
    the one whose transaction commits names its flush on the job: its line is the job's
    result, and the cost record, the budget and the counters all follow that one.
    """
    # the day the result was first stored: a redelivery after midnight keeps it
    day = (result.chatbatch.day if result.chatbatch else None) or utc_day()
    record = cost_record(inv, intake, job, result, day)
    await asyncio.gather(*extra_writes)
    lines = Lines(result, record) if stored_in is None else None
    if not await _settle(inv, intake, record, reservation, provider_calls, lines, stored_in):
        return Outcome.duplicate
    inv.count(Metric.JOBS_SUCCEEDED, intake)
    inv.count(Metric.COST_USD, intake, record.cost_nanos)
    if record.cached:
        inv.count(Metric.CACHE_HITS, intake)
        return Outcome.succeeded
    if record.usage_estimated:
        inv.count(Metric.ESTIMATED_CALLS, intake)
        return Outcome.succeeded
    inv.count(Metric.PROMPT_TOKENS, intake, record.prompt_tokens)
    inv.count(Metric.COMPLETION_TOKENS, intake, record.completion_tokens)
    if result.chatbatch:
        inv.latencies[(job.model, intake.priority.value)].append(result.chatbatch.latency_ms)
    return Outcome.succeeded


async def _settle(
    inv: Invocation,
    intake: Intake,
    record: CostRecord,
    reservation: Reservation | None,
    provider_calls: int,
    lines: Lines | None,
    stored_in: str | None,
) -> bool:
    """The final transaction: the job ``succeeded`` (its ``flush``: where its lines are),
    its counters, its reservation settled at the record's cost; with the invocation's
    other jobs (``Finals.commit``), else on its own. False when another delivery ended
    the job with an answer (or, for a copy that holds no reservation, ended it at all).

    The state read may be stale: another copy of the job may have moved it since. To a
    state that is not an end (``deferred``, ``dead_lettered``): the job is still this
    delivery's to finish, from that state. To ``failed`` or ``cancelled`` (it expired, or
    the batch was cancelled, while this copy's call was out): the answer in hand, paid
    under the reservation this copy holds, ends the job instead, from that state, so no
    billed answer is left outside the books or next to an error.
    """
    counters = _counters(record, provider_calls)
    flush = stored_in or inv.finals.place(job_key(intake))
    fields = {"flush": s(flush)}
    final = _final(inv, intake, record, reservation, counters, fields, flush, lines)
    budget = inv.services.budget
    if await inv.finals.commit(intake.record.message_id, final):
        moved = True
    else:
        settle = budget.settle_items(reservation, record.cost_nanos) if reservation else []
        stop = frozenset({JobState.succeeded}) if reservation else ENDS
        moved = await _move(
            inv, intake, JobState.succeeded, stop, counters=counters, extra=settle, fields=fields
        )
        moved = await inv.finals.settled(intake.record.message_id, moved)
    if moved and reservation is not None and record.cost_nanos > reservation.nanos:
        try:  # an overrun (billed past the worst case): its shard's excess is spread
            await io(budget.settled, reservation, record.cost_nanos)
        except Exception:  # the money is booked; the next refused reservation spreads it
            logger.exception("could not spread an overrun over the ledger's shards")
    return moved


def _final(
    inv: Invocation,
    intake: Intake,
    record: CostRecord,
    reservation: Reservation | None,
    counters: dict[str, int],
    fields: dict[str, Any],
    flush: str,
    lines: Lines | None,
) -> Final:
    """The final transaction as one part of the invocation's group commit
    (``worker/finals.py``), with the lines it stores in the objects of ``flush``."""
    services = inv.services
    move, deltas = services.batches.move(
        intake.batch_id,
        intake.custom_id,
        inv.states[intake.key],
        JobState.succeeded,
        counters,
        fields,
    )
    own, ledgers = (
        services.budget.settle_parts(reservation, record.cost_nanos) if reservation else ([], [])
    )
    return Final(
        job=job_key(intake),
        batch_id=intake.batch_id,
        custom_id=intake.custom_id,
        own=[move, *own],
        ledgers=ledgers,
        counters=deltas,
        shard=inv.counter_shard(intake.batch_id),
        intake=intake,
        flush=flush,
        lines=lines,
    )


def _counters(record: CostRecord, provider_calls: int) -> dict[str, int]:
    """What a finished job adds to its batch's counters. The token counters are what the
    provider billed; a response-cache hit billed nothing: it counts in ``cached_jobs``, its
    stored answer's tokens in ``cache_saved_tokens``."""
    if record.cached:
        saved = record.prompt_tokens + record.completion_tokens
        return {"cost_nanos": record.cost_nanos, "cached_jobs": 1, "cache_saved_tokens": saved}
    if record.usage_estimated:
        return estimated_counters(record.cost_nanos, provider_calls)
    return {
        "cost_nanos": record.cost_nanos,
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
        "provider_calls": provider_calls,
    }


def estimated_counters(nanos: int, provider_calls: int = 1) -> dict[str, int]:
    """What one call booked at its worst case adds to its batch's counters (no tokens:
    the provider's count never came back)."""
    return {
        "cost_nanos": nanos,
        "provider_calls": provider_calls,
        "estimated_calls": 1,
        "estimated_nanos": nanos,
    }


async def recover(
    inv: Invocation, intake: Intake, job: Job, reservation: Reservation | None
) -> Outcome | None:
    """A redelivery after the S3 write: finish from the job's line in the results object of
    the flush its reservation names (``Budget.arm``), call nothing; its line is not
    written again (the job's ``flush`` names that object). None when there is none (no
    reservation, as for a job already paid for: nothing to finish from)."""
    if reservation is None or reservation.flush is None:
        return None
    flush = reservation.flush
    result = await io(inv.services.store.result_in, intake.batch_id, flush, intake.custom_id)
    if result is None or result.chatbatch is None or result.response is None:
        return None
    return await finish(
        inv, intake, job, result, reservation=reservation, provider_calls=0, stored_in=flush
    )
