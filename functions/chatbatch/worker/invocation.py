"""One SQS batch in the worker: its records, their prefetched states, its tallies.

Also the vocabulary every step of the pipeline speaks: a job's ``Outcome``, and
``RetryLater`` for a record that must go back to its queue (partial batch failure).
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from chatbatch.core.jobs import job_ref
from chatbatch.core.metrics import Metric
from chatbatch.state.batches import BatchInfo, JobState, pick_shard
from chatbatch.state.budget.reservations import Reservation
from chatbatch.worker.capacity import Capacity, Slot
from chatbatch.worker.finals import Finals
from chatbatch.worker.intake import Intake
from chatbatch.worker.services import Services
from chatbatch.worker.tracing import Span


class Outcome(StrEnum):
    succeeded = "succeeded"
    failed = "failed"
    deferred = "deferred"
    throttled = "throttled"
    paused = "paused"  # the model's breaker is open (account error): handed back
    dead_lettered = "dead_lettered"
    cancelled = "cancelled"
    retry = "retry"  # transient failure: the message goes back to the queue
    duplicate = "duplicate"  # already final: nothing to do
    elsewhere = "elsewhere"  # another copy of the job is at it: this one looks again later
    refused = "refused"  # its sender may not write the batch it names: recorded, deleted


class RetryLater(Exception):
    """Raised for a record that must go back to its queue (partial batch failure)."""


@dataclass
class Invocation:
    """One SQS batch: its records decoded, its states prefetched, its tallies."""

    services: Services
    intakes: dict[str, Intake]
    states: dict[tuple[str, str], JobState]
    batches: dict[str, BatchInfo]
    deadline: float  # monotonic time by which the provider call must be over
    capacity: Capacity
    finals: Finals  # the jobs' final transactions, committed together
    tallies: Counter[tuple[Metric, str, str]] = field(default_factory=Counter)
    latencies: defaultdict[tuple[str, str], list[int]] = field(
        default_factory=lambda: defaultdict(list)
    )
    asked: set[str] = field(default_factory=set)
    reserved: dict[str, Reservation] = field(default_factory=dict)  # by job key, ahead
    # the reservation each job holds now, by job key: what to put right if the job raises
    held: dict[str, Reservation] = field(default_factory=dict)
    trace: Span = field(default_factory=Span)  # the handler's span
    spans: dict[str, Span] = field(default_factory=dict)  # each job's, by message id
    # the counter shard each batch's additions go to, picked once (``counter_shard``)
    shards: dict[str, int | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.shards = {b: pick_shard(info.counter_shards) for b, info in self.batches.items()}

    def counter_shard(self, batch_id: str) -> int | None:
        """Where this invocation adds to the batch's counters: one shard for all its jobs
        (their group commit then writes it once), a random one per invocation (so a big
        batch's invocations spread over them); None, the meta item, when unsharded."""
        return self.shards.get(batch_id)

    async def take_capacity(
        self, intake: Intake, model: str, tokens: int, *, first: bool
    ) -> Slot | float:
        if first:
            self.asked.add(intake.record.message_id)
        return await self.capacity.take(model, tokens, first=first)

    def done(self, intake: Intake) -> None:
        """The job's pipeline is over: if it never asked for capacity, say so; its final
        transaction, if it has one, is no longer to wait for."""
        self.finals.leave(intake.record.message_id)
        if intake.record.message_id not in self.asked:
            self.asked.add(intake.record.message_id)
            self.capacity.leave()

    def span(self, intake: Intake) -> Span:
        return self.spans.get(intake.record.message_id) or Span()

    def count(self, metric: Metric, intake: Intake, value: float = 1) -> None:
        model = intake.job.model if intake.job else "-"
        self.tallies[(metric, model, intake.priority.value)] += int(value)


async def io(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a blocking AWS call in a thread so the batch's jobs overlap."""
    return await asyncio.to_thread(fn, *args, **kwargs)


def job_key(intake: Intake) -> str:
    return job_ref(intake.batch_id, intake.custom_id)
