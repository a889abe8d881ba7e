"""Ingest: an ended provider batch's answers stored, costed and settled, each once
(docs/batch-route.md, "Poll and ingest").

An ``open`` part is polled; once its provider batch has ended the record goes to
``ingesting`` and every job the part still holds (``batched`` naming it: a job ingested
before a crash is no longer, so nothing is written twice) gets its outcome, in chunks of
one batch's jobs:

- **succeeded**: its answer stored as the synchronous worker stores it
  (``worker.batch_jobs.stored``), priced at the batch prices (an answer without usage at
  its worst case, as the synchronous path books one), in the chunk's results and cost
  objects (``results/<batch>/<flush>.jsonl``, ``costs/dt=<day>/<batch>/<flush>.jsonl``,
  the flush ``<part>-<run>-<chunk>``: a repeat after a crash writes objects of its own,
  and the lines of a chunk that never committed are orphans readers drop);
- **failed** (the API refused the line): its error record, ``provider_<status>``;
- **retry_sync** (expired, cancelled, a transient error): ``batch_cancelled`` when its
  batch was cancelled (``chatbatch cancel``: a part holding such a batch's jobs is
  cancelled at the provider while it runs); else sent to its priority queue if its
  deadline still leaves room, its item ``new`` again; else ``batch_expired``.

Then one transaction per chunk: each job's final state (conditional on ``batched`` by this
part), its batch's counters, the part's reservation giving up the chunk's worst cases and
each ledger booking their real cost (``Budget.ingest_parts``). A chunk refused (a job
moved meanwhile, e.g. cancelled) goes job by job. When every job is done the part's
reservations give back what they still hold (``Budget.close_part``) and the record is
``done``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from aws_lambda_powertools import Logger

from chatbatch.batchroute import part_files
from chatbatch.batchroute.clients import BatchClients
from chatbatch.batchroute.crash import crash_point
from chatbatch.batchroute.recover import held_keys
from chatbatch.core.days import utc_day
from chatbatch.core.jobs import Job
from chatbatch.core.output_lines import CostRecord, JobFacts, OutputLine
from chatbatch.core.pricing import cost, from_nanos, to_nanos
from chatbatch.core.routing import deadline_of
from chatbatch.provider.batch_api import BatchApiError, BatchPart, JobOutcome, provider_custom_id
from chatbatch.state.batches import RETRY_FROM, JobState
from chatbatch.state.budget.reservations import Reservation
from chatbatch.state.ddb import s as text
from chatbatch.state.parts import PART_FIELD, Part, PartState
from chatbatch.state.sender import Sender
from chatbatch.state.store import KeptRequest, flush_cost_key, flush_result_key
from chatbatch.worker.batch_jobs import stored
from chatbatch.worker.completion import announce_one
from chatbatch.worker.results import estimated_counters
from chatbatch.worker.services import Services

logger = Logger(service="chatbatch")

CHUNK_JOBS = 40  # one batch's jobs per transaction: their items, a counter, the ledgers
CANCELLING = frozenset({"cancelling", "canceling"})  # OpenAI's word, Anthropic's
SYNC_MARGIN_S = 3600  # a job sent back needs at least this much of its deadline left
OVERDUE_S = 25 * 3600  # the providers' 24 h window, and an hour: a batch past it is alarmed


@dataclass
class Ingested:
    parts: list[str] = field(default_factory=list)  # parts done
    succeeded: int = 0
    failed: int = 0  # failed or cancelled
    to_sync: int = 0
    cost_nanos: int = 0  # what the jobs settled cost
    overdue: int = 0  # provider batches still running past their window (alarmed)
    failed_batches: int = 0  # provider batches that failed or expired (alarmed)


@dataclass
class _Job:
    """One held job's outcome, ready for its chunk's transaction."""

    job: Job
    outcome: JobOutcome
    new: JobState  # succeeded, failed, cancelled, or new (sent back to the synchronous path)
    nanos: int = 0  # its real cost at the batch prices
    worst: int = 0  # what the part reserved for it
    result: OutputLine | None = None
    record: CostRecord | None = None
    error: OutputLine | None = None
    counters: dict[str, int] = field(default_factory=dict)
    fields: dict[str, Any] = field(default_factory=dict)


class Ingester:
    def __init__(
        self, services: Services, clients: BatchClients, clock: Callable[[], float] = time.time
    ) -> None:
        self.s = services
        self.clients = clients
        self.clock = clock
        self.sender = Sender(services.sqs, services.store, services.resources)
        self.done = Ingested()

    def poll(self, record: Part) -> None:
        """An ``open`` part: ingest it once its provider batch has ended; while it runs,
        cancel it at the provider if a batch among its jobs was cancelled (its answered
        lines stay answered, billed, and are settled as any)."""
        assert record.provider_batch_id is not None
        client = self.clients.of(record.provider, record.api)
        try:
            state = client.poll(record.provider_batch_id)
        except BatchApiError as err:
            if err.status != 404:
                raise
            logger.warning(  # its jobs did not run: ingested as such (back to sync)
                "the provider has no such batch", extra={"part": record.part_id}
            )
            self._ended(record)
            return
        if not state.ended:
            if state.status not in CANCELLING and self._cancelled(record):
                client.cancel(record.provider_batch_id)
            if self.clock() > record.created_at + OVERDUE_S:
                self.done.overdue += 1
            return
        if state.status in ("failed", "expired") or state.counts.get("expired", 0):
            self.done.failed_batches += 1
            logger.warning(
                "a provider batch failed or expired",
                extra={"part": record.part_id, "status": state.status, "counts": state.counts},
            )
        self._ended(record)

    def _ended(self, record: Part) -> None:
        if self.s.parts.advance(record.part_id, PartState.open, PartState.ingesting):
            crash_point("ingest_after_ingesting")
            self.ingest(record.model_copy(update={"state": PartState.ingesting}))

    def ingest(self, record: Part) -> None:
        """An ``ingesting`` part: every job it still holds, then its money and record."""
        assert record.provider_batch_id is not None
        part = part_files.read(self.s.store, record, self.s.config)
        if part is None:
            logger.error("a part's record has no input file", extra={"part": record.part_id})
            return
        held = set(held_keys(self.s, record, part))
        client = self.clients.of(record.provider, record.api)
        try:
            outcomes = client.results(record.provider_batch_id, part)
        except BatchApiError as err:
            if err.status != 404:
                raise
            # the provider has no such batch (another account's key, a local run resumed
            # with a new simulator): its jobs did not run there
            why = "the provider has no such batch"
            outcomes = [
                JobOutcome(r.job.batch_id or "", r.job.custom_id, "retry_sync", message=why)
                for r in part.requests
            ]
        money = self.s.budget.part_held(record.part_id, record.batches)
        cancelled = self._cancelled(record)
        jobs = [
            self._job(record, part, o, cancelled)
            for o in outcomes
            if (o.batch_id, o.custom_id) in held
        ]
        run = uuid.uuid4().hex[:8]  # a repeat's chunks differ: never overwrite a committed one
        for k, chunk in enumerate(_chunks(jobs)):
            self._commit(record, chunk, money, f"{record.part_id}-{run}-{k:05d}")
            crash_point("ingest_after_transaction")
        if self.s.config.events.enabled:  # raises: the part stays ingesting, and is looked
            for batch_id in record.batches:  # at again next pass (nothing held: no writes)
                announce_one(self.s, batch_id)
        crash_point("ingest_before_close")
        if self.s.budget.close_part(money.values()):
            crash_point("ingest_after_close")
            self.s.parts.advance(record.part_id, PartState.ingesting, PartState.done)
            self.done.parts.append(record.part_id)

    def _cancelled(self, record: Part) -> set[str]:
        """The batches among the part's jobs that were cancelled (``chatbatch cancel``)."""
        infos = (self.s.batches.get(batch_id) for batch_id in record.batches)
        return {info.batch_id for info in infos if info is not None and info.cancelled}

    def _job(self, record: Part, part: BatchPart, outcome: JobOutcome, cancelled: set[str]) -> _Job:
        job = part.jobs[provider_custom_id(outcome.batch_id, outcome.custom_id)]
        model = self.s.config.models[job.model].batch_priced()
        worst = to_nanos(job.worst_case_usd(model))

        def ended(state: JobState, code: str, line: OutputLine) -> _Job:
            """A job that ends without an answer: its error line and code, at no cost."""
            fields = {"error_code": text(code)}
            return _Job(job, outcome, state, worst=worst, error=line, fields=fields)

        batch_id = outcome.batch_id
        if outcome.kind == "succeeded":
            return self._answered(stored(outcome, part, self.s.config), job, worst)
        if outcome.kind == "failed":
            line = OutputLine.answered(
                batch_id,
                job.custom_id,
                outcome.status or 400,
                outcome.error or {"error": {"message": outcome.message}},
                None,
                self._facts(job, batch_id),  # as a synchronous refusal's: no cost
            )
            return ended(JobState.failed, f"provider_{outcome.status}", line)
        if batch_id in cancelled:
            why = f"batch {batch_id} was cancelled before its provider batch ran this job"
            line = OutputLine.failure(batch_id, job.custom_id, "batch_cancelled", why)
            return ended(JobState.cancelled, "batch_cancelled", line)
        deadline = record.created_at + deadline_of(job, self.s.config) * 3600
        if deadline - self.clock() >= SYNC_MARGIN_S:
            return _Job(job, outcome, JobState.new, worst=worst)
        why = (
            f"its provider batch did not run it ({outcome.message}) and its deadline "
            f"(deadline_h {deadline_of(job, self.s.config):g}) leaves no time to run it "
            "synchronously; send it again with `chatbatch retry`"
        )
        line = OutputLine.failure(batch_id, job.custom_id, "batch_expired", why)
        return ended(JobState.failed, "batch_expired", line)

    def _facts(self, job: Job, batch_id: str, nanos: int = 0, **more: Any) -> JobFacts:
        return JobFacts(
            batch_id=batch_id,
            priority=job.priority or self.s.config.defaults.priority,
            model=job.model,
            role=job.role,
            cost_usd=from_nanos(nanos),
            attempts=1,
            seq=job.seq,
            **more,
        )

    def _answered(self, outcome: JobOutcome, job: Job, worst: int) -> _Job:
        model = self.s.config.models[job.model]
        priced = model.batch_priced()
        estimated = outcome.usage is None
        usage = job.worst_case_usage(priced) if outcome.usage is None else outcome.usage
        nanos = worst if estimated else to_nanos(cost(usage, priced))
        batch_id = outcome.batch_id
        priority = job.priority or self.s.config.defaults.priority
        day = ""  # set per chunk: the reservation's day
        facts = self._facts(
            job,
            batch_id,
            nanos,
            usage_estimated=estimated,
            booked_usage=usage if estimated else None,
        )
        assert outcome.body is not None
        result = OutputLine.result(job, facts, outcome.body, outcome.body.get("id"))
        record = CostRecord.of(
            job,
            model,
            batch_id=batch_id,
            priority=priority,
            usage=usage,
            nanos=nanos,
            day=day,
            usage_estimated=estimated,
            route="batch",
        )
        counters = (
            estimated_counters(nanos)
            if estimated
            else {
                "cost_nanos": nanos,
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "provider_calls": 1,
            }
        )
        return _Job(
            job,
            outcome,
            JobState.succeeded,
            nanos=nanos,
            worst=worst,
            result=result,
            record=record,
            counters=counters,
        )

    def _commit(
        self, record: Part, chunk: Sequence[_Job], money: dict[str, Reservation], flush: str
    ) -> None:
        batch_id = chunk[0].outcome.batch_id
        held = money.get(batch_id)
        day = held.day if held else utc_day(self.clock())  # its cost on the day it reserved
        answered = [j for j in chunk if j.new is JobState.succeeded]
        for j in answered:
            assert j.result and j.result.chatbatch and j.record
            j.result.chatbatch.day = day
            j.record.dt = day
            j.fields = {"flush": text(flush)}
        if answered:
            self.s.store.put_lines(
                flush_result_key(batch_id, flush),
                [j.result.to_line() for j in answered if j.result],
            )
            self.s.store.put_lines(
                flush_cost_key(day, batch_id, flush),
                [j.record.model_dump_json() for j in answered if j.record],
            )
        crash_point("ingest_after_objects")
        for j in chunk:
            if j.new in RETRY_FROM:  # kept, as the worker keeps a failed job's message:
                self.s.store.put_request(  # `chatbatch retry` sends it again from here
                    KeptRequest(
                        batch_id=batch_id,
                        custom_id=j.job.custom_id,
                        priority=j.job.priority or self.s.config.defaults.priority,
                        body=self.sender.body(j.job),
                    )
                )
            if j.error is not None:
                self.s.store.put_error(batch_id, j.error)
                crash_point("ingest_after_errors")
            if j.new is JobState.new:
                self.sender.send(j.job.priority or self.s.config.defaults.priority, [j.job])
                crash_point("ingest_after_sends")
        if not self._transact(record, chunk, held):
            for j in chunk:
                self._transact(record, [j], held)

    def _transact(self, record: Part, jobs: Sequence[_Job], held: Reservation | None) -> bool:
        batch_id = jobs[0].outcome.batch_id
        items: list[Any] = []
        counters: dict[str, int] = {}
        for j in jobs:
            if j.new is JobState.new:
                item, deltas = self.s.parts.send_back_item(
                    record.part_id, batch_id, j.job.custom_id, to_sync=True
                )
            else:
                item, deltas = self.s.batches.move(
                    batch_id,
                    j.job.custom_id,
                    JobState.batched,
                    j.new,
                    j.counters,
                    j.fields,
                    pins={PART_FIELD: text(record.part_id)},
                )
            items.append(item)
            for name, delta in deltas.items():
                counters[name] = counters.get(name, 0) + delta
        items += self.s.batches.count_items(batch_id, counters)
        if held is not None:
            actual = sum(j.nanos for j in jobs)
            own, ledgers = self.s.budget.ingest_parts(held, actual, sum(j.worst for j in jobs))
            items += own + self.s.budget.ledger_items(ledgers)
        if not self.s.batches.commit(items):
            return False
        for j in jobs:
            self.done.cost_nanos += j.nanos
            if j.new is JobState.succeeded:
                self.done.succeeded += 1
            elif j.new in (JobState.failed, JobState.cancelled):
                self.done.failed += 1
            else:
                self.done.to_sync += 1
        return True


def _chunks(jobs: Sequence[_Job]) -> Iterator[list[_Job]]:
    by_batch: dict[str, list[_Job]] = {}
    for j in jobs:
        by_batch.setdefault(j.outcome.batch_id, []).append(j)
    for batch in by_batch.values():
        for start in range(0, len(batch), CHUNK_JOBS):
            yield batch[start : start + CHUNK_JOBS]
