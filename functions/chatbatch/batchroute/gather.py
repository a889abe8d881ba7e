"""Gather: the batch queue's jobs into provider batches, each exactly once
(docs/batch-route.md, "Gather").

A run receives what waits on the batch queue (up to ``MAX_JOBS_PER_RUN``), screens each
message as the synchronous worker does (its sender may write its batch; its line is a
job), drops the copies of jobs already ended or held by a part (and the late copies of
jobs a part sent to the synchronous path: ``new``, naming it), and sends what cannot go
through a batch API (an invalid line, a streamed request) to its priority queue, whose
worker records the error or runs it. The rest is split into provider batches
(``worker.batch_jobs.batch_parts``) and each goes out in this order, so that a crash
between any two steps leaves something the next run finishes (``recover``):

1. its input file (``part_files``: the jobs and the exact lines);
2. its record, ``creating``, and its jobs ``batched`` naming it (``Parts.create``);
3. its money, one reservation per batch among its jobs at the batch prices
   (``Budget.reserve_part``). Refused (the day's budget, or a batch's own limit, has no
   room for all of it): its later half leaves it ``deferred`` and is sent again as new
   messages delayed ``LATER_S``, and the rest tries again, down to no job: as on the
   synchronous path, the jobs that fit run and the others wait;
4. the messages deleted;
5. the provider batch created, naming the part (OpenAI's ``metadata``), and its id on the
   record (``open``).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from chatbatch.batchroute import part_files
from chatbatch.batchroute.clients import BatchClients
from chatbatch.batchroute.crash import crash_point
from chatbatch.core.config import Priority
from chatbatch.core.jobs import Job
from chatbatch.core.output_lines import OutputLine
from chatbatch.core.pricing import to_nanos
from chatbatch.core.routing import batch_refusal
from chatbatch.core.sqs_records import sqs_record
from chatbatch.provider.batch_api import BatchApiError, BatchPart
from chatbatch.state.batches import BatchInfo, JobRecord, JobState
from chatbatch.state.budget.errors import BudgetDeferred
from chatbatch.state.budget.parts import part_ask
from chatbatch.state.budget.reservations import Ask
from chatbatch.state.parts import JobIn, Part, PartState
from chatbatch.state.sender import BATCH_LANE, Sender
from chatbatch.worker.batch_jobs import batch_parts
from chatbatch.worker.intake import Intake, read_record
from chatbatch.worker.producers import REFUSED, screen
from chatbatch.worker.services import Services

logger = Logger(service="chatbatch")

MAX_JOBS_PER_RUN = 50_000  # one OpenAI batch's worth a run
MAX_BATCHES_PER_PART = 40  # one reservation each, all in one transaction (reserve_part)
LATER_S = 300  # a message not gathered now (budget, a part being recovered) comes back then
PART_METADATA = "chatbatch_part"
# a short poll samples some of SQS's servers and may come back empty while messages wait:
# an empty one is checked against the queue's depth, and polled again up to this often
EMPTY_POLLS = 3  # the key naming the part on an OpenAI batch


@dataclass
class Gathered:
    """What a gather did."""

    parts: list[str] = field(default_factory=list)  # part ids opened
    jobs: int = 0  # jobs put in provider batches
    to_sync: int = 0  # messages sent to the synchronous path
    dropped: int = 0  # copies of jobs already ended or held
    deferred: int = 0  # jobs left for a later run (budget)


class Gatherer:
    """One run's gather from the batch queue (``queue_url``)."""

    def __init__(
        self,
        services: Services,
        clients: BatchClients,
        queue_url: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.s = services
        self.clients = clients
        self.queue_url = queue_url
        self.clock = clock
        self.sender = Sender(services.sqs, services.store, services.resources)
        self.done = Gathered()

    def gather(self, parts: dict[str, Part]) -> Gathered:
        """Receive, screen and send out every job on the queue; ``parts``: every part's
        record at the run's start (a copy of a job in a part still ``creating`` waits)."""
        intakes = self._receive()
        if not intakes:
            return self.done
        records, infos = self.s.batches.prefetch_records(i.key for i in intakes)
        states = {key: record.state for key, record in records.items()}
        jobs: dict[tuple[str, str], tuple[Job, list[Intake]]] = {}
        for intake in screen(
            {i.record.message_id: i for i in intakes}, infos, self.s.principal
        ).values():
            job = self._admit(intake, records[intake.key], infos, parts)
            if job is None:
                continue
            held = jobs.setdefault(intake.key, (job, []))  # copies of one job: one line
            held[1].append(intake)
        for part in self._split(job for job, _ in jobs.values()):
            self._open(part, jobs, states)
        return self.done

    def _receive(self) -> list[Intake]:
        intakes: list[Intake] = []
        # no priority's queue: a job's priority is its line's, else its batch's
        region = self.s.sqs.meta.region_name
        empty = 0  # short polls in a row that found nothing
        while len(intakes) < MAX_JOBS_PER_RUN and empty < EMPTY_POLLS:
            messages = self.s.sqs.receive_message(
                QueueUrl=self.queue_url,
                MaxNumberOfMessages=10,
                AttributeNames=["All"],
                MessageAttributeNames=["All"],
            ).get("Messages", [])
            if not messages:
                empty = empty + 1 if self._visible() else EMPTY_POLLS
                continue
            empty = 0
            for message in messages:
                record = SQSRecord(sqs_record(message, self.queue_url, region))
                intakes.append(read_record(record, self.s.config, self.s.resources, self.s.store))
        return intakes

    def _visible(self) -> int:
        """The messages the queue says are waiting (approximate)."""
        attributes = self.s.sqs.get_queue_attributes(
            QueueUrl=self.queue_url, AttributeNames=["ApproximateNumberOfMessages"]
        )["Attributes"]
        return int(attributes.get("ApproximateNumberOfMessages", 0))

    def _admit(
        self,
        intake: Intake,
        record: JobRecord,
        infos: dict[str, BatchInfo],
        parts: dict[str, Part],
    ) -> Job | None:
        """The job to put in a provider batch, stamped with its batch and priority; None
        when the message was dealt with here (or waits for a later run)."""
        state = record.state
        if intake.transient:
            self._later([intake])
            return None
        if intake.refused:
            self.s.store.put_refused(intake.batch_id, intake.record.message_id, _refused(intake))
            self._delete([intake])
            return None
        sent_to_sync = state is JobState.new and record.part is not None  # a late copy
        if state.terminal or state is JobState.batched or sent_to_sync:
            if state is JobState.batched and self._in_creating_part(record, parts):
                self._later([intake])  # its part may be abandoned: then it gathers again
            else:
                self.done.dropped += 1
                self._delete([intake])
            return None
        job = intake.job
        info = infos.get(intake.batch_id)
        cancelled = info is not None and info.cancelled  # the worker records it cancelled
        if job is None or cancelled or batch_refusal(job, self.s.config) is not None:
            self._to_sync(intake, infos)
            return None
        priority = job.priority or _priority(info, self.s)
        return job.model_copy(update={"batch_id": intake.batch_id, "priority": priority})

    def _in_creating_part(self, record: JobRecord, parts: dict[str, Part]) -> bool:
        part = parts.get(record.part or "")
        return part is not None and part.state is PartState.creating

    def _to_sync(self, intake: Intake, infos: dict[str, BatchInfo]) -> None:
        """The message as it came, onto its priority's queue (the synchronous worker runs
        it, or records why its line is not a job); then off the batch queue."""
        job = intake.job
        priority = (job.priority if job else None) or _priority(infos.get(intake.batch_id), self.s)
        self.s.sqs.send_message(
            QueueUrl=self.s.resources.queues[priority], MessageBody=intake.record.body
        )
        self._delete([intake])
        self.done.to_sync += 1

    def _split(self, jobs: Iterable[Job]) -> list[BatchPart]:
        """The provider batches, each holding jobs of at most ``MAX_BATCHES_PER_PART``
        batches (so its reservations make one transaction)."""
        out: list[BatchPart] = []
        for part in batch_parts(sorted(jobs, key=lambda j: j.batch_id or ""), self.s.config):
            current: BatchPart | None = None
            batches: set[str] = set()
            for request in part.requests:
                batch = request.job.batch_id or ""
                if current is None or (
                    batch not in batches and len(batches) >= MAX_BATCHES_PER_PART
                ):
                    current = BatchPart(api=part.api, provider=part.provider, model=part.model)
                    batches = set()
                    out.append(current)
                batches.add(batch)
                current.add(request)
        return out

    def _open(
        self,
        part: BatchPart,
        jobs: dict[tuple[str, str], tuple[Job, list[Intake]]],
        states: dict[tuple[str, str], JobState],
    ) -> None:
        part_id = uuid.uuid4().hex
        record = Part(
            part_id=part_id,
            model=part.model or "",
            api=part.api,
            provider=part.provider,
            created_at=self.clock(),
        )
        keys = [(r.job.batch_id or "", r.job.custom_id) for r in part.requests]
        part_files.write(self.s.store, part_id, part)
        crash_point("gather_after_file")
        ins = [
            JobIn(batch_id=b, custom_id=c, state=states.get((b, c), JobState.new)) for b, c in keys
        ]
        left_out = {(j.batch_id, j.custom_id) for j in self.s.parts.create(record, ins)}
        if left_out:  # moved on since read (another copy ended them): not in this part
            self._delete([i for key in left_out for i in jobs[key][1]])
            part = _without(part, left_out)
            keys = [k for k in keys if k not in left_out]
            part_files.write(self.s.store, part_id, part)
        crash_point("gather_after_record")
        while not self._reserved(part_id, part):  # no room for it all: half waits
            keep = len(part.requests) // 2
            waits = {(r.job.batch_id or "", r.job.custom_id) for r in part.requests[keep:]}
            if keep:
                self.s.parts.leave(part_id, held_jobs(waits), to=JobState.deferred)
            else:
                self.s.parts.abandon(part_id, held_jobs(waits), to=JobState.deferred)
            # deferred, as the worker counts a job waiting for budget; sent again delayed
            self._again_later([jobs[key][0] for key in waits])  # no receive burnt waiting
            self._delete([i for key in waits for i in jobs[key][1]])
            self.done.deferred += len(waits)
            if not keep:
                return
            part = _without(part, waits)
            keys = [k for k in keys if k not in waits]
            part_files.write(self.s.store, part_id, part)
        intakes = [i for key in keys for i in jobs[key][1]]
        crash_point("gather_after_reserve")
        self._delete(intakes)
        crash_point("gather_after_delete")
        self.done.jobs += len(keys)
        open_at_provider(self.s, self.clients, record, part)
        self.done.parts.append(part_id)

    def _reserved(self, part_id: str, part: BatchPart) -> bool:
        """The part's money reserved; False when the budget (the day's, or a batch's own
        limit) has no room for all of it now."""
        try:
            self.s.budget.reserve_part(self._asks(part_id, part))
        except BudgetDeferred as err:
            logger.info("a part waits for budget", extra={"part": part_id, "why": str(err)})
            return False
        return True

    def _asks(self, part_id: str, part: BatchPart) -> list[Ask]:
        """One ask per batch among the part's jobs: their worst cases at the batch prices."""
        worst: dict[str, int] = {}
        for request in part.requests:
            job = request.job
            model = self.s.config.models[job.model].batch_priced()
            batch = job.batch_id or ""
            worst[batch] = worst.get(batch, 0) + to_nanos(job.worst_case_usd(model))
        asks = []
        for batch, nanos in worst.items():
            info = self.s.batches.get(batch)
            limit = info.budget_nanos if info else None
            if limit is None and self.s.config.budget.batch_usd is not None:
                limit = to_nanos(self.s.config.budget.batch_usd)
            shards = info.counter_shards if info else 1
            asks.append(part_ask(part_id, batch, nanos, limit, shards))
        return asks

    def _delete(self, intakes: Sequence[Intake]) -> None:
        for start in range(0, len(intakes), 10):
            chunk = intakes[start : start + 10]
            reply = self.s.sqs.delete_message_batch(
                QueueUrl=self.queue_url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": intake.record.receipt_handle}
                    for i, intake in enumerate(chunk)
                ],
            )
            for failed in reply.get("Failed", []):  # it comes back: its job is held by then
                logger.warning("a message was not deleted", extra={"failure": failed})

    def _again_later(self, jobs: Sequence[Job]) -> None:
        """Each job as a new message on the batch queue, visible after ``LATER_S``: a job
        that waits for budget never counts receives toward the batch queue's DLQ."""
        for start in range(0, len(jobs), 10):
            self.sender.send(BATCH_LANE, list(jobs[start : start + 10]), delay_s=LATER_S)

    def _later(self, intakes: Sequence[Intake]) -> None:
        for start in range(0, len(intakes), 10):
            chunk = intakes[start : start + 10]
            self.s.sqs.change_message_visibility_batch(
                QueueUrl=self.queue_url,
                Entries=[
                    {
                        "Id": str(i),
                        "ReceiptHandle": intake.record.receipt_handle,
                        "VisibilityTimeout": LATER_S,
                    }
                    for i, intake in enumerate(chunk)
                ],
            )


def open_at_provider(s: Services, clients: BatchClients, record: Part, part: BatchPart) -> bool:
    """Create the part's provider batch and record its id (``open``); False when the
    provider did not take it now (the record stays ``creating``: the next run looks for
    it at the provider before creating it again)."""
    client = clients.of(record.provider, record.api)
    try:
        state = client.create(part, metadata={PART_METADATA: record.part_id})
    except BatchApiError as err:
        logger.warning(
            "the provider did not create a part's batch",
            extra={"part": record.part_id, "error": str(err), "transient": err.transient},
        )
        return False
    crash_point("after_provider_create")
    s.parts.opened(record.part_id, state.id)
    return True


def held_jobs(keys: Iterable[tuple[str, str]]) -> list[JobIn]:
    """Jobs a part holds (``batched``), by (batch, custom_id)."""
    return [JobIn(batch_id=b, custom_id=c, state=JobState.batched) for b, c in keys]


def _without(part: BatchPart, keys: set[tuple[str, str]]) -> BatchPart:
    kept = BatchPart(api=part.api, provider=part.provider, model=part.model)
    for request in part.requests:
        if (request.job.batch_id or "", request.job.custom_id) not in keys:
            kept.add(request)
    return kept


def _priority(info: BatchInfo | None, s: Services) -> Priority:
    """A job's priority when its line names none: its batch's, else the config's."""
    if info is not None and info.priority:
        return Priority(info.priority)
    return s.config.defaults.priority


def _refused(intake: Intake) -> OutputLine:
    """The refusal line the synchronous worker writes for such a message."""
    assert intake.refused is not None
    return OutputLine.failure(intake.batch_id, intake.custom_id, REFUSED, intake.refused)
