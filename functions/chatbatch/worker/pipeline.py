"""One job through the pipeline: the logic behind the thin Lambda handler.

For each record of a batch (all records run concurrently as asyncio tasks; blocking AWS
calls run in threads so they overlap too):

1. decode and validate (``intake``)                  -> bad job: error record, ``failed``
2. idempotency: the job's state, prefetched for the whole batch in one read
   (keyed on batch id + custom_id, never the SQS message id) -> already final: skip
3. cancelled batch                                    -> ``cancelled``, no provider call
4. budget: reserve the worst case (an invocation's new -> over budget: handed back, ``deferred``;
   jobs together: ``reserve_ahead``)                     held by another copy: looks again later
5. response cache (opt-in)                            -> hit: free result, ``cached: true``
6. rate limit: take 1 request + estimated tokens      -> no capacity soon: handed back
7. the provider call (retries inside the client)      -> permanent error: ``failed``;
                                                         transient: back to the queue, DLQ
                                                         after maxReceiveCount
8. S3: result + cost record (deterministic keys)
9. one transaction: settle the budget to the exact cost, job state ``succeeded``, batch
   counters. A redelivery after step 8 finds the result and only does step 9.

Idempotency is our own conditional writes, not Powertools' idempotency utility: its
decorators do not support coroutines, and here the "already done" check has to be one
transaction with the budget settlement and the counters, or a crash between them would
count a cost twice or not at all.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools import Logger

from chatbatch.core.config import Config
from chatbatch.core.jobs import CostRecord, Job, JobFacts, OutputLine
from chatbatch.core.pricing import Usage, cost, to_nanos
from chatbatch.core.resources import Resources
from chatbatch.provider.client import Attempt, Completion, ProviderClient, ProviderError
from chatbatch.state.batches import Batches, BatchInfo, JobState
from chatbatch.state.budget import (
    AlreadySettled,
    Ask,
    Budget,
    BudgetDeferred,
    HeldElsewhere,
    OverRequestCap,
    Reservation,
)
from chatbatch.state.limiter.limiter import RateLimiter, RequestTooLargeError
from chatbatch.state.store import Store
from chatbatch.worker.capacity import Capacity, Slot
from chatbatch.worker.intake import ATTR_BATCH, ATTR_HANDBACKS, ATTR_OWNER, Intake
from chatbatch.worker.tracing import Span

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

logger = Logger(service="chatbatch")

MAX_DELAY_S = 900  # SQS DelaySeconds limit
SAFETY_MARGIN_S = 10.0  # left for S3 writes and the settle after the provider call


class Outcome(StrEnum):
    succeeded = "succeeded"
    failed = "failed"
    deferred = "deferred"
    throttled = "throttled"
    dead_lettered = "dead_lettered"
    cancelled = "cancelled"
    retry = "retry"  # transient failure: the message goes back to the queue
    duplicate = "duplicate"  # already final: nothing to do
    elsewhere = "elsewhere"  # another copy of the job is at it: this one looks again later


class RetryLater(Exception):
    """Raised for a record that must go back to its queue (partial batch failure)."""


class WorkerCrash(BaseException):
    """A simulated crash: the instance dies mid-batch (fault injection in tests/benchmarks)."""


CrashHook = Callable[[str, Intake], bool]
CRASH_POINTS = ("after_reserve", "after_call", "after_s3_write", "before_delete")
crash_hook: CrashHook | None = None  # set by fault tests; None in production


def crash_point(name: str, intake: Intake) -> None:
    if crash_hook is not None and crash_hook(name, intake):
        raise WorkerCrash(f"simulated crash {name} ({intake.batch_id}/{intake.custom_id})")


@dataclass
class Services:
    """What a worker instance holds across invocations."""

    config: Config
    resources: Resources
    store: Store
    batches: Batches
    budget: Budget
    limiter: RateLimiter
    provider: ProviderClient
    sqs: SQSClient


@dataclass
class Invocation:
    """One SQS batch: its records decoded, its states prefetched, its tallies."""

    services: Services
    intakes: dict[str, Intake]
    states: dict[tuple[str, str], JobState]
    batches: dict[str, BatchInfo]
    deadline: float  # monotonic time by which the provider call must be over
    capacity: Capacity
    tallies: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    latencies: defaultdict[tuple[str, str], list[int]] = field(
        default_factory=lambda: defaultdict(list)
    )
    asked: set[str] = field(default_factory=set)
    reserved: dict[str, Reservation] = field(default_factory=dict)  # by job key, ahead
    trace: Span = field(default_factory=Span)  # the handler's span
    spans: dict[str, Span] = field(default_factory=dict)  # each job's, by message id

    async def take_capacity(
        self, intake: Intake, model: str, tokens: int, *, first: bool
    ) -> Slot | float:
        if first:
            self.asked.add(intake.record.message_id)
        return await self.capacity.take(model, tokens, first=first)

    def done(self, intake: Intake) -> None:
        """The job's pipeline is over: if it never asked for capacity, say so."""
        if intake.record.message_id not in self.asked:
            self.asked.add(intake.record.message_id)
            self.capacity.leave()

    def span(self, intake: Intake) -> Span:
        return self.spans.get(intake.record.message_id) or Span()

    def count(self, metric: str, intake: Intake, value: float = 1) -> None:
        model = intake.job.model if intake.job else "-"
        self.tallies[(metric, model, intake.priority.value)] += int(value)


def _today() -> str:
    return f"{dt.datetime.now(dt.UTC):%Y-%m-%d}"


async def _io(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a blocking AWS call in a thread so the batch's jobs overlap."""
    return await asyncio.to_thread(fn, *args, **kwargs)


# --- outcomes ----------------------------------------------------------------------


async def _fail(
    inv: Invocation,
    intake: Intake,
    code: str,
    message: str,
    facts: JobFacts | None = None,
    new: JobState = JobState.failed,
) -> None:
    line = OutputLine.failure(intake.batch_id, intake.custom_id, code, message, facts)
    await _io(inv.services.store.put_error, intake.batch_id, line)
    prev = inv.states[intake.key]
    await _io(
        inv.services.batches.transition, intake.batch_id, intake.custom_id, prev=prev, new=new
    )


async def _hand_back(inv: Invocation, intake: Intake, delay_s: float, outcome: Outcome) -> Outcome:
    """Re-send the job with a delay and let the original go: never counts toward the DLQ."""
    services = inv.services
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
    await _io(
        services.sqs.send_message,
        QueueUrl=queue,
        MessageBody=intake.record.body,
        DelaySeconds=max(0, min(MAX_DELAY_S, round(delay_s))),
        MessageAttributes=attributes,
    )
    if outcome is Outcome.elsewhere:  # the job's state is the other copy's to move
        return outcome
    prev = inv.states[intake.key]
    new = JobState.deferred if outcome is Outcome.deferred else JobState.throttled
    await _io(services.batches.transition, intake.batch_id, intake.custom_id, prev=prev, new=new)
    inv.count("JobsDeferred" if outcome is Outcome.deferred else "JobsThrottled", intake)
    return outcome


async def _dead_letter(inv: Invocation, intake: Intake, reason: str) -> None:
    """The last delivery failed: SQS moves the message to the DLQ at its next receive
    (made immediate here); record why now."""
    services = inv.services
    message = f"gave up after {intake.receive_count} deliveries: {reason}"
    await _fail(inv, intake, "dead_lettered", message, new=JobState.dead_lettered)
    inv.count("JobsDeadLettered", intake)
    await _io(
        services.sqs.change_message_visibility,
        QueueUrl=services.resources.queues[intake.priority],
        ReceiptHandle=intake.record.receipt_handle,
        VisibilityTimeout=0,
    )


async def _retry(inv: Invocation, intake: Intake, err: ProviderError) -> Outcome:
    """A transient failure: back to the queue with a backoff, or the DLQ's turn."""
    services = inv.services
    if intake.receive_count >= services.config.worker.max_receive_count:
        await _dead_letter(inv, intake, str(err))
        raise RetryLater(str(err))
    backoff = services.config.retries.max_backoff_s * 2 ** (intake.receive_count - 1)
    delay = math.ceil(min(MAX_DELAY_S, max(backoff, err.retry_after_s or 0)))
    await _io(
        services.sqs.change_message_visibility,
        QueueUrl=services.resources.queues[intake.priority],
        ReceiptHandle=intake.record.receipt_handle,
        VisibilityTimeout=delay,
    )
    raise RetryLater(str(err))


# --- the job -----------------------------------------------------------------------


def _facts(
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
        day=_today(),
    )


def _cost_record(
    inv: Invocation, intake: Intake, job: Job, result: OutputLine, day: str
) -> CostRecord:
    """The cost record of a stored result: its usage, priced as the result says."""
    assert result.chatbatch is not None and result.response is not None
    facts = result.chatbatch
    usage = Usage.from_api(result.response.body.get("usage"))
    model = inv.services.config.models[job.model]
    return CostRecord(
        ts=dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
        dt=day,
        batch_id=intake.batch_id,
        custom_id=intake.custom_id,
        priority=intake.priority,
        model=job.model,
        model_id=model.model_id,
        provider=model.provider,
        role=job.role,
        prompt_tokens=usage.prompt_tokens,
        cached_tokens=usage.cached_tokens,
        completion_tokens=usage.completion_tokens,
        reasoning_tokens=usage.reasoning_tokens,
        cost_nanos=to_nanos(facts.cost_usd),
        cost_usd=facts.cost_usd,
        cached=facts.cached,
    )


def _cacheable(config: Config, job: Job) -> bool:
    return job.cache or (config.defaults.cache_temperature_zero and job.temperature == 0)


async def _finish(
    inv: Invocation,
    intake: Intake,
    job: Job,
    result: OutputLine,
    *,
    reservation: Reservation | None,
    provider_calls: int,
    extra_writes: Sequence[Awaitable[None]] = (),
) -> Outcome:
    """Store the result, then settle and count once, in one transaction with the job's state.

    The result object is written only if none exists (S3 ``If-None-Match``): when two
    deliveries of one job race, the first result stored is the job's result, and the
    cost record, the budget and the counters all follow that one.
    """
    services = inv.services
    stored = await _io(services.store.put_result_once, intake.batch_id, result)
    # the day the result was first stored: a redelivery after midnight keeps it
    day = (stored.chatbatch.day if stored.chatbatch else None) or _today()
    record = _cost_record(inv, intake, job, stored, day)
    await asyncio.gather(_io(services.store.put_cost, record), *extra_writes)
    crash_point("after_s3_write", intake)
    counters = {
        "cost_nanos": record.cost_nanos,
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
        "provider_calls": provider_calls,
    }
    settle = services.budget.settle_items(reservation, record.cost_nanos) if reservation else []
    done = await _io(
        services.batches.transition,
        intake.batch_id,
        intake.custom_id,
        prev=inv.states[intake.key],
        new=JobState.succeeded,
        counters=counters,
        extra=settle,
    )
    if not done:
        return Outcome.duplicate
    inv.count("JobsSucceeded", intake)
    inv.count("CostNanos", intake, record.cost_nanos)
    inv.count("PromptTokens", intake, record.prompt_tokens)
    inv.count("CompletionTokens", intake, record.completion_tokens)
    if stored.chatbatch and not stored.chatbatch.cached:
        inv.latencies[(job.model, intake.priority.value)].append(stored.chatbatch.latency_ms)
    return Outcome.succeeded


def job_key(intake: Intake) -> str:
    return f"{intake.batch_id}#{intake.custom_id}"


async def _recover(
    inv: Invocation, intake: Intake, job: Job, reservation: Reservation | None
) -> Outcome | None:
    """A redelivery after the S3 write: finish from the stored result, call nothing."""
    result = await _io(inv.services.store.get_result, intake.batch_id, intake.custom_id)
    if result is None or result.chatbatch is None or result.response is None:
        return None
    return await _finish(inv, intake, job, result, reservation=reservation, provider_calls=0)


async def _from_cache(
    inv: Invocation, intake: Intake, job: Job, key: str, reservation: Reservation
) -> Outcome | None:
    """An identical request answered before: free, marked ``cached``; the reservation is
    settled at the stored result's cost (0, unless another delivery stored a paid one)."""
    body = await _io(inv.services.store.get_cached, key)
    if body is None:
        return None
    inv.count("CacheHits", intake)
    facts = _facts(intake, job, Decimal(0), 0, 0, cached=True)
    result = OutputLine.result(job, facts, body)
    return await _finish(inv, intake, job, result, reservation=reservation, provider_calls=0)


async def _call(inv: Invocation, intake: Intake, job: Job) -> Completion | Outcome:
    """Take rate-limit capacity and call the provider; hand back when there is none soon."""
    services = inv.services
    model = services.config.models[job.model]
    estimate = job.estimated_tokens(model)
    first = True
    while True:
        got = await inv.take_capacity(intake, job.model, estimate, first=first)
        first = False
        if isinstance(got, tuple):
            lease, index = got
            break
        remaining = inv.deadline - time.monotonic()
        if got > min(services.config.worker.max_throttle_wait_s, remaining):
            # The reservation stays: the re-sent copy is its owner and takes it back.
            return await _hand_back(inv, intake, got, Outcome.throttled)
        await asyncio.sleep(got)
    url = services.config.providers[model.provider].chat_url
    with inv.span(intake).child("provider", "remote") as span:
        span.annotate(model=job.model)
        try:
            completion = await services.provider.complete(
                job.model,
                job.request_body(model),
                deadline_s=max(1.0, inv.deadline - time.monotonic()),
            )
        except ProviderError as err:
            lease.reconcile(index, 0)  # the request counted at the provider, its tokens did not
            _trace_attempts(span, url, err.attempts)
            raise
        _trace_attempts(span, url, completion.attempts)
    lease.reconcile(index, completion.usage.total_tokens)
    return completion


def _trace_attempts(span: Span, url: str, attempts: Sequence[Attempt]) -> None:
    span.annotate(attempts=len(attempts), rate_limited=sum(a.status == 429 for a in attempts))
    span.http(url, attempts[-1].status if attempts else None)


def _ask(inv: Invocation, intake: Intake, job: Job) -> Ask:
    """What the job asks of the budget: its worst case, and its batch's limit if any."""
    config = inv.services.config
    batch_limit = inv.batches[intake.batch_id].budget_nanos
    if batch_limit is None and config.budget.batch_usd is not None:
        batch_limit = to_nanos(config.budget.batch_usd)
    worst = to_nanos(job.worst_case_usd(config.models[job.model]))
    return Ask(job_key(intake), worst, intake.batch_id, batch_limit, intake.owner)


def reserve_ahead(inv: Invocation) -> None:
    """Reserve for the invocation's new jobs (first delivery, never handed back, state
    ``new``) in one transaction, one ledger write for all; the others, and all of them if
    that is refused or fails, reserve one by one when their turn comes."""
    try:
        asks = [
            _ask(inv, intake, intake.job)
            for intake in inv.intakes.values()
            if intake.job is not None
            and not intake.transient
            and intake.receive_count == 1
            and intake.handbacks == 0
            and inv.states[intake.key] is JobState.new
            and not inv.batches[intake.batch_id].cancelled
        ]
        inv.reserved = inv.services.budget.reserve_many(asks)
    except Exception:  # an optimisation: never fail the batch for it (each job retries)
        logger.exception("could not reserve the invocation's jobs together")


async def _reserve(inv: Invocation, intake: Intake, job: Job) -> Reservation | Outcome:
    if (held := inv.reserved.pop(job_key(intake), None)) is not None:
        return held
    ask = _ask(inv, intake, job)
    try:
        return await _io(  # type: ignore[no-any-return]
            inv.services.budget.reserve,
            ask.job_key,
            ask.nanos,
            batch_id=ask.batch_id,
            batch_limit_nanos=ask.batch_limit_nanos,
            owner=ask.owner,
        )
    except OverRequestCap as err:
        return await _refuse(inv, intake, "over_request_cap", str(err))
    except BudgetDeferred as err:
        return await _hand_back(inv, intake, err.retry_after_s, Outcome.deferred)
    except HeldElsewhere as err:
        return await _hand_back(inv, intake, err.retry_after_s, Outcome.elsewhere)
    except AlreadySettled:
        # Paid for already (its final transaction ran): finish from the stored result.
        return await _recover(inv, intake, job, None) or Outcome.duplicate


async def _before_budget(inv: Invocation, intake: Intake) -> Outcome | None:
    """Jobs that end before any money moves: duplicates, invalid, cancelled."""
    if inv.states[intake.key].terminal:
        return Outcome.duplicate
    if intake.transient:
        raise RetryLater(intake.transient)
    if intake.job is None:
        assert intake.error is not None
        return await _refuse(inv, intake, intake.error.code, str(intake.error))
    if inv.batches[intake.batch_id].cancelled:
        message = f"batch {intake.batch_id} was cancelled before this job started"
        await _fail(inv, intake, "cancelled", message, new=JobState.cancelled)
        return Outcome.cancelled
    return None


async def process(inv: Invocation, intake: Intake) -> Outcome:
    """One job, start to end, in its own trace span. An unexpected error on its last
    delivery is recorded."""
    with inv.trace.child("job") as span:
        inv.spans[intake.record.message_id] = span
        span.annotate(
            batch_id=intake.batch_id,
            custom_id=intake.custom_id,
            priority=intake.priority.value,
            model=intake.job.model if intake.job else None,
            receive_count=intake.receive_count,
        )
        try:
            outcome = await _process(inv, intake)
        except Exception as err:
            if intake.receive_count >= inv.services.config.worker.max_receive_count:
                await _dead_letter(inv, intake, f"{type(err).__name__}: {err}")
            raise
        span.annotate(outcome=outcome.value)
        return outcome


async def _process(inv: Invocation, intake: Intake) -> Outcome:
    services, config = inv.services, inv.services.config
    if ended := await _before_budget(inv, intake):
        return ended
    job = intake.job
    assert job is not None
    reservation = await _reserve(inv, intake, job)
    if isinstance(reservation, Outcome):
        return reservation
    crash_point("after_reserve", intake)
    # Anything but a first delivery with a fresh reservation may find its result already
    # stored (a crash after the S3 write; a copy that took over a dead one's reservation):
    # finish from it, call nothing.
    first_delivery = (
        intake.receive_count == 1
        and inv.states[intake.key] is JobState.new
        and not reservation.resumed
    )
    if not first_delivery and (recovered := await _recover(inv, intake, job, reservation)):
        return recovered
    model = config.models[job.model]
    cache_key = job.cache_key(model) if _cacheable(config, job) else None
    if cache_key and (hit := await _from_cache(inv, intake, job, cache_key, reservation)):
        return hit
    try:
        called = await _call(inv, intake, job)
    except (ProviderError, RequestTooLargeError) as err:
        await _io(services.budget.release, reservation)
        if isinstance(err, RequestTooLargeError):
            return await _refuse(inv, intake, "request_too_large", str(err))
        inv.count("ProviderErrors", intake)
        if err.permanent:
            return await _refuse(inv, intake, f"provider_{err.status}", err.message)
        return await _retry(inv, intake, err)
    if isinstance(called, Outcome):
        return called
    crash_point("after_call", intake)
    return await _succeed(inv, intake, job, called, reservation, cache_key)


async def _refuse(inv: Invocation, intake: Intake, code: str, message: str) -> Outcome:
    """A permanent failure: an error record, counted as failed, never retried."""
    await _fail(inv, intake, code, message)
    inv.count("JobsFailed", intake)
    return Outcome.failed


async def _succeed(
    inv: Invocation,
    intake: Intake,
    job: Job,
    completion: Completion,
    reservation: Reservation,
    cache_key: str | None,
) -> Outcome:
    services = inv.services
    usd = cost(completion.usage, services.config.models[job.model])
    facts = _facts(intake, job, usd, completion.latency_ms, len(completion.attempts), False)
    result = OutputLine.result(job, facts, completion.body)
    inv.count("Retries", intake, len(completion.attempts) - 1)
    inv.count("ProviderRateLimited", intake, sum(a.status == 429 for a in completion.attempts))
    logger.info(
        "job answered",
        extra={
            "batch_id": intake.batch_id,
            "custom_id": intake.custom_id,
            "priority": intake.priority.value,
            "model": job.model,
            "cost_usd": str(usd),
            "latency_ms": completion.latency_ms,
            "attempts": len(completion.attempts),
        },
    )
    if services.config.worker.log_prompts:  # switched on by the owner: content in the logs
        logger.info(
            "job content",
            extra={
                "batch_id": intake.batch_id,
                "custom_id": intake.custom_id,
                "messages": job.request_body(services.config.models[job.model])["messages"],
                "answer": completion.content,
            },
        )
    cache_write = [_io(services.store.put_cached, cache_key, completion.body)] if cache_key else []
    return await _finish(
        inv,
        intake,
        job,
        result,
        reservation=reservation,
        provider_calls=1,
        extra_writes=cache_write,
    )
