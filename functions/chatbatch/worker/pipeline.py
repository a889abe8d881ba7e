"""One job through the pipeline: the logic behind the thin Lambda handler.

For each record of a batch (all records run concurrently as asyncio tasks; blocking AWS
calls run in threads so they overlap too):

1. decode and validate (``intake``)                  -> bad job: error record, ``failed``
2. idempotency: the job's state, prefetched for the whole batch in one read
   (keyed on batch id + custom_id, never the SQS message id) -> already final: skip
3. cancelled batch                                    -> ``cancelled``, no provider call
4. budget: reserve the worst case (an invocation's new -> over budget: handed back, ``deferred``;
   jobs together: ``reserve_ahead``)                     the day's spent: the pipeline pauses
                                                         (``budget_pause``); held by another
                                                         copy: looks again later
5. response cache (opt-in)                            -> hit: free result, ``cached: true``,
                                                         in ``cached_jobs``, not billed tokens
6. the model's breaker (``pause``), then rate limit:  -> paused (account error): handed back
   take 1 request + estimated tokens                     no capacity soon: handed back
7. the provider call (retries inside the client)      -> account error: model paused, job
                                                         handed back, ``paused``;
                                                         permanent error: ``failed``;
                                                         transient: back to the queue, DLQ
                                                         after maxReceiveCount
8. S3: result + cost record, as lines of the invocation's flush objects (one PUT per
   object for all its jobs: ``worker/finals.py``)
9. one transaction: settle the budget to the exact cost, job state ``succeeded`` (and its
   ``flush``), batch counters. A redelivery after step 8 finds the result in the objects
   of the flush its reservation names and only does step 9.

Idempotency is our own conditional writes, not Powertools' idempotency utility: its
decorators do not support coroutines, and here the "already done" check has to be one
transaction with the budget settlement and the counters, or a crash between them would
count a cost twice or not at all.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Sequence
from decimal import Decimal

from aws_lambda_powertools import Logger

from chatbatch.core.config import Config
from chatbatch.core.jobs import Job
from chatbatch.core.metrics import Metric
from chatbatch.core.output_lines import OutputLine
from chatbatch.core.pricing import cost, from_nanos, to_nanos
from chatbatch.provider.attempt import Attempt, Completion
from chatbatch.provider.errors import ProviderError
from chatbatch.state.batches import JobState
from chatbatch.state.budget.budget import HELD_RETRY_S
from chatbatch.state.budget.errors import (
    AlreadySettled,
    BudgetDeferred,
    HeldElsewhere,
    OverRequestCap,
)
from chatbatch.state.budget.reservations import Ask, Reservation
from chatbatch.state.limiter.lease import Grant
from chatbatch.state.limiter.limiter import RequestTooLargeError
from chatbatch.state.limiter.pacer import PACER, Send
from chatbatch.translate import result_body, wire_body
from chatbatch.worker import budget_pause, pause, producers, requeue, results, unread
from chatbatch.worker.capacity import Slot
from chatbatch.worker.crash import crash_point
from chatbatch.worker.intake import Intake
from chatbatch.worker.invocation import Invocation, Outcome, RetryLater, io, job_key
from chatbatch.worker.tracing import Span

logger = Logger(service="chatbatch")

SAFETY_MARGIN_S = 10.0  # left for S3 writes and the settle after the provider call
UNREAD_REBUYS = 2  # calls re-bought in one delivery after an answer that was never read
MIN_CALL_S = 5.0  # a call is re-bought in this delivery only with this much time left


def _cacheable(config: Config, job: Job) -> bool:
    return job.cache or (config.defaults.cache_temperature_zero and job.temperature == 0)


async def _from_cache(
    inv: Invocation, intake: Intake, job: Job, key: str, reservation: Reservation
) -> Outcome | None:
    """An identical request answered before: free, marked ``cached``; the reservation is
    settled at the stored result's cost (0, unless another delivery stored a paid one)."""
    body = await io(inv.services.store.get_cached, key)
    if body is None:
        return None
    facts = results.job_facts(intake, job, Decimal(0), 0, 0, cached=True)
    result = OutputLine.result(job, facts, body)
    return await results.finish(inv, intake, job, result, reservation=reservation, provider_calls=0)


async def _capacity(
    inv: Invocation, intake: Intake, model: str, tokens: int, *, first: bool
) -> Slot | float:
    """Capacity for one send of ``tokens`` estimated tokens (send it at ``send_at``); waits
    in-process while the limiter's wait is short (``worker.max_throttle_wait_s`` and the
    invocation's time), else returns that wait."""
    while True:
        got = await inv.take_capacity(intake, model, tokens, first=first)
        first = False
        if isinstance(got, tuple):
            return got
        remaining = inv.deadline - time.monotonic()
        if got > min(inv.services.config.worker.max_throttle_wait_s, remaining):
            return got
        await asyncio.sleep(got)


class _RetryThrottled(Exception):
    """No rate-limit capacity for a retry soon: the call ends, the job is handed back."""

    def __init__(self, wait_s: float) -> None:
        super().__init__(f"no rate-limit capacity for a retry within {wait_s:.1f} s")
        self.wait_s = wait_s


async def _call(
    inv: Invocation, intake: Intake, job: Job, reservation: Reservation
) -> Completion | Outcome:
    """Take rate-limit capacity, mark the reservation and call the provider; hand back
    when there is no capacity soon. Each retry of the call takes capacity too."""
    services = inv.services
    model = services.config.models[job.model]
    estimate = job.estimated_tokens(model)
    got = await _capacity(inv, intake, job.model, estimate, first=True)
    if not isinstance(got, tuple):
        # The reservation stays: the re-sent copy is its owner and takes it back.
        return await requeue.hand_back(inv, intake, got, Outcome.throttled, reservation)
    lease, index = got
    pacing = Pacing(lease.grant, model.burst_s)

    async def before_retry() -> bool:  # one more request at the provider: its own capacity
        retry = await _capacity(inv, intake, job.model, 0, first=False)
        if not isinstance(retry, tuple):
            raise _RetryThrottled(retry)
        pacing.grant = retry[0].grant
        await wake_at(retry[0].send_at(retry[1]))
        return True

    reservation.flush = inv.finals.flush  # where its answer will be: recorded as it arms
    if not await io(services.budget.arm, reservation):  # no longer this copy's
        lease.release(index)  # never sent: its request and send time go to others
        return await requeue.hand_back(inv, intake, HELD_RETRY_S, Outcome.elsewhere)
    await wake_at(lease.send_at(index))  # the slow work (the arm's write) done: on time
    provider = services.config.providers[model.provider]
    url = provider.url
    with inv.span(intake).child("provider", "remote") as span:
        span.annotate(model=job.model)
        try:
            completion = await services.provider.complete(
                job.model,
                wire_body(job, model, provider),
                deadline_s=max(1.0, inv.deadline - time.monotonic()),
                before_retry=before_retry,
                pacing=pacing,
            )
        except ProviderError as err:
            # the request counted at the provider; its tokens did unless it never left
            lease.reconcile(index, estimate if err.maybe_billed else 0)
            _trace_attempts(span, url, err.attempts)
            raise
        except _RetryThrottled as err:
            # Every attempt so far was refused before any answer (only those are retried):
            # nothing billed. The reservation goes back (its copy reserves anew), and the
            # job waits in its queue, never burning a receive count on throttling.
            lease.reconcile(index, 0)
            await io(services.budget.release, reservation)
            return await requeue.hand_back(inv, intake, err.wait_s, Outcome.throttled)
        _trace_attempts(span, url, completion.attempts)
    # the result carries the answer in the job's form (a Message becomes a chat.completion)
    completion = completion.model_copy(update={"body": result_body(job, completion.body, provider)})
    used = completion.usage.total_tokens if completion.usage is not None else estimate
    lease.reconcile(index, used)
    return completion


async def wake_at(when: float) -> None:
    """Sleep until the send time (epoch seconds) the limiter spaced the job to: sends from
    all workers are spread at the limit's rate, and sending early would bunch them."""
    await asyncio.sleep(max(0.0, when - time.time()))


class Pacing:
    """The process's pace (``PACER``) at each attempt: a busy process wakes late, and its
    late sends would leave together. ``grant``: the attempt's (each retry has its own).
    The wait is spent before the attempt takes a connection (``ready``); the send is taken
    as its request is written (``before_write``), counted from when it left (``written``)."""

    def __init__(self, grant: Grant, burst_s: float) -> None:
        self.grant = grant
        self.burst_s = burst_s
        self._send: Send | None = None

    async def ready(self) -> None:
        g = self.grant
        while wait := PACER.wait_s(g.model, g.shard, g.spacing_s, self.burst_s, time.monotonic()):
            await asyncio.sleep(wait)

    async def before_write(self) -> None:
        g = self.grant
        while not isinstance(
            got := PACER.take(g.model, g.shard, g.spacing_s, self.burst_s, time.monotonic()),
            Send,
        ):
            await asyncio.sleep(got)
        self._send = got

    def written(self) -> None:
        if self._send is not None:
            PACER.written(self.grant.model, self.grant.shard, self._send, time.monotonic())
            self._send = None


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
    # a batch's ledger has as many shards as its counters (what it was registered with)
    shards = inv.batches[intake.batch_id].counter_shards
    return Ask(job_key(intake), worst, intake.batch_id, batch_limit, intake.owner, shards)


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
        # armed as they are made, for this invocation's calls: no arm write each
        inv.reserved = inv.services.budget.reserve_many(asks, armed_for=inv.finals.flush)
        if inv.reserved:
            first = next(iter(inv.reserved.values()))
            inv.finals.cover(first.marker_at(), inv.reserved)
    except Exception:  # an optimisation: never fail the batch for it (each job retries)
        logger.exception("could not reserve the invocation's jobs together")


async def _reserve(inv: Invocation, intake: Intake, job: Job) -> Reservation | Outcome:
    got: Reservation | Outcome | None = inv.reserved.pop(job_key(intake), None)
    if got is None:
        got = await _reserve_alone(inv, intake, job)
    if isinstance(got, Reservation):
        inv.held[job_key(intake)] = got  # put right if the job raises (``_after_raise``)
    return got


async def _reserve_alone(inv: Invocation, intake: Intake, job: Job) -> Reservation | Outcome:
    ask = _ask(inv, intake, job)
    try:
        return await io(  # type: ignore[no-any-return]
            inv.services.budget.reserve,
            ask.job_key,
            ask.nanos,
            batch_id=ask.batch_id,
            batch_limit_nanos=ask.batch_limit_nanos,
            owner=ask.owner,
            batch_shards=ask.batch_shards,
        )
    except OverRequestCap as err:
        return await results.refuse(inv, intake, "over_request_cap", str(err))
    except BudgetDeferred as err:
        if err.until is not None:  # the day's spending is at its limit: pause everything
            return await budget_pause.paused(inv, intake, err)
        return await requeue.hand_back(inv, intake, err.retry_after_s, Outcome.deferred)
    except HeldElsewhere as err:
        return await requeue.hand_back(inv, intake, err.retry_after_s, Outcome.elsewhere)
    except AlreadySettled:
        # Paid for already (its final transaction ran): finish from the stored result.
        return await results.recover(inv, intake, job, None) or Outcome.duplicate


async def _before_budget(inv: Invocation, intake: Intake) -> Outcome | None:
    """Jobs that end before any money moves: refused senders, duplicates, invalid,
    cancelled."""
    if intake.refused:
        return await producers.refuse(inv, intake)
    if inv.states[intake.key].terminal:
        return Outcome.duplicate
    if intake.transient:
        raise RetryLater(intake.transient)
    if intake.job is None:
        assert intake.error is not None
        return await results.refuse(inv, intake, intake.error.code, str(intake.error))
    if inv.batches[intake.batch_id].cancelled:
        message = f"batch {intake.batch_id} was cancelled before this job started"
        await results.fail(inv, intake, "batch_cancelled", message, new=JobState.cancelled)
        return Outcome.cancelled
    return None


async def _after_raise(inv: Invocation, intake: Intake) -> None:
    """A job that raised, keeping its reservation: its next delivery must not wait for a
    call of this one. Armed as it was made and never sent: unarmed (``Budget.disarm``), so
    it is taken back as it is. Its call sent: marked over (``Budget.call_over``), so the
    next delivery finishes from the stored answer, or books the call, at once instead of
    waiting ``worker.timeout_s`` for a worker that is no longer in it. Best effort: the
    job's own error is what counts (left as it is, the next delivery waits, then books)."""
    if (held := inv.held.pop(job_key(intake), None)) is None:
        return
    budget = inv.services.budget
    try:
        if held.armed_unsent:
            await io(budget.disarm, held)
        elif held.armed:
            await io(budget.call_over, held)
    except Exception:
        logger.exception("could not put right the reservation of a job that raised")


async def process(inv: Invocation, intake: Intake) -> Outcome:
    """One job, start to end, in its own trace span. Whatever ends its last delivery in
    failure dead-letters it here, once: the error record keeps that error's own text (a
    ``RetryLater``'s reason, else the exception's type and message)."""
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
            await _after_raise(inv, intake)
            if requeue.last_delivery(inv, intake):
                reason = str(err) if isinstance(err, RetryLater) else f"{type(err).__name__}: {err}"
                await requeue.dead_letter(inv, intake, reason)
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
    if not first_delivery and (recovered := await results.recover(inv, intake, job, reservation)):
        return recovered
    if reservation.armed and not reservation.armed_unsent:  # a call went out, no answer stored
        reservation = await _rebuy(inv, intake, job, reservation, "its worker died in the call")
        if isinstance(reservation, Outcome):
            return reservation
    model = config.models[job.model]
    cache_key = job.cache_key(model) if _cacheable(config, job) else None
    if cache_key and (hit := await _from_cache(inv, intake, job, cache_key, reservation)):
        return hit
    for rebuys in itertools.count():
        if (gate := await pause.gate(inv, job.model)) is pause.Gate.paused:
            await io(services.budget.release, reservation)
            return await pause.pause(inv, intake)
        try:
            called = await _call(inv, intake, job, reservation)
        except (ProviderError, RequestTooLargeError) as err:
            if isinstance(err, ProviderError) and err.maybe_billed:
                inv.count(Metric.PROVIDER_ERRORS, intake)
                if rebuys >= UNREAD_REBUYS or time.monotonic() > inv.deadline - MIN_CALL_S:
                    await unread.book(inv, intake, job, reservation, err.message)
                    return await requeue.retry(inv, intake, err)
                reservation = await _rebuy(inv, intake, job, reservation, err.message)
                if isinstance(reservation, Outcome):
                    return reservation
                continue
            return await _failed(inv, intake, job, reservation, err)
        break
    if isinstance(called, Outcome):
        return called
    if gate is pause.Gate.probe:
        await pause.probe_passed(inv, job.model)
    crash_point("after_call", intake)
    return await _succeed(inv, intake, job, called, reservation, cache_key)


async def _rebuy(
    inv: Invocation, intake: Intake, job: Job, reservation: Reservation, why: str
) -> Reservation | Outcome:
    """Book the call made under ``reservation`` (its answer never read) and reserve anew
    for the next one: no second call goes out on money already spent. A reservation that
    is no longer this delivery's (another delivery of the job booked or released it, or a
    reclaim booked it) is not bought again here: the job is handed back, so two
    deliveries never both call."""
    if not await unread.book(inv, intake, job, reservation, why):
        return await requeue.hand_back(inv, intake, HELD_RETRY_S, Outcome.elsewhere)
    return await _reserve(inv, intake, job)


async def _failed(
    inv: Invocation,
    intake: Intake,
    job: Job,
    reservation: Reservation,
    err: ProviderError | RequestTooLargeError,
) -> Outcome:
    """A call that billed nothing and failed: the job is refused (its reservation settled
    at 0 as it fails: ``results.fail``), or the reservation goes back and the job is
    paused (an account error) or retried later."""
    if isinstance(err, RequestTooLargeError):
        return await results.refuse(
            inv, intake, "request_too_large", str(err), reservation=reservation
        )
    inv.count(Metric.PROVIDER_ERRORS, intake)
    if err.permanent and err.account is None:
        latency = sum(a.latency_ms for a in err.attempts)
        facts = results.job_facts(intake, job, Decimal(0), latency, len(err.attempts), False)
        code = f"provider_{err.status}"
        return await results.refuse(
            inv, intake, code, err.message, facts, err.answer, reservation=reservation
        )
    await io(inv.services.budget.release, reservation)
    if err.account is not None:  # the account's fault, not the job's: pause the model
        await pause.opened(inv, job.model, err)
        return await pause.pause(inv, intake)
    return await requeue.retry(inv, intake, err)


async def _succeed(
    inv: Invocation,
    intake: Intake,
    job: Job,
    completion: Completion,
    reservation: Reservation,
    cache_key: str | None,
) -> Outcome:
    services = inv.services
    estimated = completion.usage is None  # billed all the same: booked at the worst case
    usd = (
        from_nanos(reservation.nanos)
        if completion.usage is None
        else cost(completion.usage, services.config.models[job.model])
    )
    facts = results.job_facts(
        intake, job, usd, completion.latency_ms, len(completion.attempts), False
    ).model_copy(update={"usage_estimated": estimated})
    if estimated:
        booked = job.worst_case_usage(services.config.models[job.model])
        facts = facts.model_copy(update={"booked_usage": booked})
    result = OutputLine.result(job, facts, completion.body, completion.request_id)
    inv.count(Metric.RETRIES, intake, len(completion.attempts) - 1)
    inv.count(
        Metric.PROVIDER_RATE_LIMITED, intake, sum(a.status == 429 for a in completion.attempts)
    )
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
                "messages": job.prompt_body(services.config.models[job.model])["messages"],
                "answer": completion.content,
            },
        )
    cache_write = [io(services.store.put_cached, cache_key, completion.body)] if cache_key else []
    return await results.finish(
        inv,
        intake,
        job,
        result,
        reservation=reservation,
        provider_calls=1,
        extra_writes=cache_write,
    )
