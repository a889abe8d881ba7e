"""The batch route's parts: the jobs one provider batch holds (docs/batch-route.md).

A **part** is chosen by the gatherer before anything leaves for the provider: a part id,
the model and API, the jobs. Its record (``PART_PK`` / ``<part id>``) goes through
``creating`` → ``open`` (the provider's batch id known) → ``ingesting`` → ``done``; every
record sits in one partition, so a run lists them with one Query. The record holds no
job list: each job's own item says ``batched`` and names its part (``part``), and the
part's input file (``parts/<part>.jsonl``, written before the messages are deleted)
holds every line sent.

``Parts.create`` moves the jobs into the part exactly once: the record is put first (only
if absent), then each job goes from the state its delivery read to ``batched`` naming the
part, in transactions of at most DynamoDB's 100 items, each conditional on the record
still ``creating``. A chunk refused for one job's stale state is retried job by job; the
jobs that moved on meanwhile (another delivery ended them) are left out and returned. A
crash between chunks leaves the record ``creating`` with the jobs moved so far, each
named by it and by no other part, which is what the next run resumes from.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel

from chatbatch.core.jobs import job_ref
from chatbatch.core.resources import TABLE_PK, TABLE_SK, TABLE_TTL
from chatbatch.state.batches import Batches, JobState, job_key
from chatbatch.state.ddb import MAX_TRANSACT_ITEMS, n, plain, s, transact

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

PART_PK = "parts"  # every part's record under one partition key: one Query lists them
PART_FIELD = "part"  # on a job's item: the part that holds it while it is ``batched``
DONE_KEEP_S = 7 * 86_400  # a done part's record, then DynamoDB's TTL deletes it


class PartState(StrEnum):
    creating = "creating"  # the record and its jobs written; no provider batch known yet
    open = "open"  # the provider's batch created: polled until it ends
    ingesting = "ingesting"  # ended: its answers being stored and settled
    done = "done"  # every job final or sent back; the part's money closed


class Part(BaseModel):
    """A provider batch as the gatherer plans and tracks it."""

    part_id: str
    model: str  # the model id of every line (OpenAI), else "" (Anthropic may mix models)
    api: Literal["openai", "anthropic"]
    provider: str = ""  # the config's provider whose batch API holds it
    jobs: int = 0  # how many jobs it holds
    batches: list[str] = []  # the batches among its jobs (where its money is: one each)
    state: PartState = PartState.creating
    provider_batch_id: str | None = None
    created_at: float = 0.0


class JobIn(BaseModel):
    """A job to put in a part: its batch, custom id and the state its delivery read."""

    batch_id: str
    custom_id: str
    state: JobState = JobState.new

    @property
    def ref(self) -> str:
        return job_ref(self.batch_id, self.custom_id)


def part_key(part_id: str) -> dict[str, Any]:
    return {TABLE_PK: s(PART_PK), TABLE_SK: s(part_id)}


class Parts:
    """The parts' records and the moves of their jobs, on the pipeline's table."""

    def __init__(self, ddb: DynamoDBClient, table: str, batches: Batches) -> None:
        self._ddb = ddb
        self._table = table
        self._batches = batches

    def create(self, part: Part, jobs: Sequence[JobIn]) -> list[JobIn]:
        """Put the part's record (``creating``, only if no record has its id) and move
        ``jobs`` into it; the jobs that could not be moved (their state was no longer
        the one read), which the part does not hold. Raises ``PartExists`` if the id is
        taken. The record names the batches among ``jobs``."""
        batches = sorted({job.batch_id for job in jobs})
        record = {
            "Put": {
                "TableName": self._table,
                "Item": {
                    **part_key(part.part_id),
                    "model": s(part.model),
                    "api": s(part.api),
                    "provider": s(part.provider),
                    "state": s(PartState.creating.value),
                    "jobs": n(0),
                    "created_at": n(round(part.created_at or time.time(), 3)),
                    **({"batches": {"SS": batches}} if batches else {}),
                },
                "ConditionExpression": "attribute_not_exists(#pk)",
                "ExpressionAttributeNames": {"#pk": TABLE_PK},
            }
        }
        if transact(self._ddb, [record]):
            raise PartExists(part.part_id)
        left_out: list[JobIn] = []
        for chunk in _chunks(jobs):
            if not self._move(part.part_id, chunk):
                left_out += [job for job in chunk if not self._move(part.part_id, [job])]
        return left_out

    def _move(self, part_id: str, jobs: Sequence[JobIn]) -> bool:
        """One transaction: ``jobs`` to ``batched`` naming the part, their batches'
        counters, the record's job count, on the record still ``creating``. False when a
        condition failed (nothing written)."""
        items: list[Any] = []
        counters: dict[str, dict[str, int]] = {}
        for job in jobs:
            item, deltas = self._batches.move(
                job.batch_id,
                job.custom_id,
                job.state,
                JobState.batched,
                fields={PART_FIELD: s(part_id)},
            )
            items.append(item)
            total = counters.setdefault(job.batch_id, {})
            for name, delta in deltas.items():
                total[name] = total.get(name, 0) + delta
        for batch_id, deltas in counters.items():
            items += self._batches.count_items(batch_id, deltas)
        items.append(self._count_on_record(part_id, len(jobs)))
        return not transact(self._ddb, items)

    def abandon(
        self,
        part_id: str,
        jobs: Sequence[JobIn],
        to: JobState = JobState.new,
        *,
        to_sync: bool = False,
    ) -> None:
        """Let a part that never reached its provider go: each of ``jobs`` it still holds
        leaves it, as if never gathered (``new``: its state removed, so its message, which
        is still on the queue, gathers it again), or ``deferred`` (waiting for budget, as
        the worker counts such a job), in transactions on the record still ``creating``;
        then the record is ``done``. A job the part no longer holds is skipped. Safe to
        repeat."""
        self.leave(part_id, jobs, to, to_sync=to_sync)
        self._advance(part_id, PartState.creating, PartState.done, {})

    def leave(
        self,
        part_id: str,
        jobs: Sequence[JobIn],
        to: JobState = JobState.new,
        *,
        to_sync: bool = False,
    ) -> None:
        """``jobs`` leave a part still ``creating`` (to ``new`` or a waiting state, as in
        ``abandon``; ``to_sync``: sent to the synchronous path, see ``send_back_item``),
        the part keeping the rest. A job it no longer holds is skipped."""
        for chunk in _chunks(jobs):
            if not self._release(part_id, chunk, to, to_sync):
                for job in chunk:
                    self._release(part_id, [job], to, to_sync)

    def _release(self, part_id: str, jobs: Sequence[JobIn], to: JobState, to_sync: bool) -> bool:
        items: list[Any] = []
        counts: dict[str, dict[str, int]] = {}
        for job in jobs:
            item, deltas = self.send_back_item(
                part_id, job.batch_id, job.custom_id, to, to_sync=to_sync
            )
            items.append(item)
            total = counts.setdefault(job.batch_id, {})
            for name, delta in deltas.items():
                total[name] = total.get(name, 0) + delta
        for batch_id, deltas in counts.items():
            items += self._batches.count_items(batch_id, deltas)
        items.append(self._count_on_record(part_id, -len(jobs)))
        return not transact(self._ddb, items)

    def send_back_item(
        self,
        part_id: str,
        batch_id: str,
        custom_id: str,
        to: JobState = JobState.new,
        *,
        to_sync: bool = False,
    ) -> tuple[dict[str, Any], dict[str, int]]:
        """The job's item out of the part, on the condition that the part holds it, to
        ``new`` (its state removed: as if never gathered) or to a waiting state (its
        gauge); and what that adds to its batch's counters. ``to_sync``: the job was sent
        to the synchronous path: it is ``new`` for the worker, and keeps naming the part,
        so a late copy of its batch-queue message is not gathered again (the gatherer
        drops a ``new`` job that names a part)."""
        values = {":batched": s(JobState.batched.value), ":part": s(part_id)}
        update = "REMOVE #s" if to_sync else "REMOVE #s, #p"
        deltas = {JobState.batched.counter: -1}
        if to is not JobState.new:
            assert to.gauge is not None, to
            update = "SET #s = :to REMOVE #p"
            values[":to"] = s(to.value)
            deltas[to.gauge] = 1
        item = {
            "Update": {
                "TableName": self._table,
                "Key": job_key(batch_id, custom_id),
                "UpdateExpression": update,
                "ConditionExpression": "#s = :batched AND #p = :part",
                "ExpressionAttributeNames": {"#s": "state", "#p": PART_FIELD},
                "ExpressionAttributeValues": values,
            }
        }
        return item, deltas

    def _count_on_record(self, part_id: str, jobs: int) -> dict[str, Any]:
        """The record's job count changed by ``jobs``, on the record still ``creating``."""
        return {
            "Update": {
                "TableName": self._table,
                "Key": part_key(part_id),
                "UpdateExpression": "ADD #j :n",
                "ConditionExpression": "#s = :creating",
                "ExpressionAttributeNames": {"#j": "jobs", "#s": "state"},
                "ExpressionAttributeValues": {
                    ":n": n(jobs),
                    ":creating": s(PartState.creating.value),
                },
            }
        }

    def opened(self, part_id: str, provider_batch_id: str) -> bool:
        """The provider's batch is created: record its id (``creating`` → ``open``, once).
        False if the record was not ``creating``."""
        return self._advance(
            part_id, PartState.creating, PartState.open, {"provider_batch_id": provider_batch_id}
        )

    def advance(self, part_id: str, prev: PartState, new: PartState) -> bool:
        """``prev`` → ``new`` (``open`` → ``ingesting`` → ``done``), once."""
        return self._advance(part_id, prev, new, {})

    def _advance(
        self, part_id: str, prev: PartState, new: PartState, fields: Mapping[str, str]
    ) -> bool:
        """``prev`` -> ``new`` with ``fields``; a ``done`` record expires after
        ``DONE_KEEP_S`` (its partition, listed every pass, holds the parts at work)."""
        typed = {k: s(v) for k, v in fields.items()}
        if new is PartState.done:
            typed[TABLE_TTL] = n(int(time.time()) + DONE_KEEP_S)
        names = {"#s": "state", **{f"#f{i}": k for i, k in enumerate(typed)}}
        values = {":prev": s(prev.value), ":new": s(new.value)}
        values |= {f":f{i}": v for i, v in enumerate(typed.values())}
        sets = ", ".join(["#s = :new", *(f"#f{i} = :f{i}" for i in range(len(typed)))])
        try:
            self._ddb.update_item(
                TableName=self._table,
                Key=part_key(part_id),
                UpdateExpression=f"SET {sets}",
                ConditionExpression="#s = :prev",
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
            )
        except self._ddb.exceptions.ConditionalCheckFailedException:
            return False
        return True

    def get(self, part_id: str) -> Part | None:
        item = self._ddb.get_item(
            TableName=self._table, Key=part_key(part_id), ConsistentRead=True
        ).get("Item")
        return _part(item) if item else None

    def listed(self, *states: PartState) -> Iterator[Part]:
        """Every part's record (in ``states`` if any are given), from its one partition."""
        kwargs: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": "#pk = :pk",
            "ExpressionAttributeNames": {"#pk": TABLE_PK},
            "ExpressionAttributeValues": {":pk": s(PART_PK)},
            "ConsistentRead": True,
        }
        while True:
            reply = self._ddb.query(**kwargs)
            for item in reply.get("Items", []):
                part = _part(item)
                if not states or part.state in states:
                    yield part
            if "LastEvaluatedKey" not in reply:
                return
            kwargs["ExclusiveStartKey"] = reply["LastEvaluatedKey"]


class PartExists(Exception):
    """A part's id is taken: parts are never written twice."""

    def __init__(self, part_id: str) -> None:
        super().__init__(f"part {part_id} exists already")
        self.part_id = part_id


def _part(item: Mapping[str, Any]) -> Part:
    fields = plain(item)
    return Part(
        part_id=item[TABLE_SK]["S"],
        model=fields["model"],
        api=fields["api"],
        provider=fields.get("provider", ""),
        jobs=int(fields.get("jobs", 0)),
        batches=sorted(item.get("batches", {}).get("SS", [])),
        state=PartState(fields["state"]),
        provider_batch_id=fields.get("provider_batch_id"),
        created_at=float(fields.get("created_at", 0)),
    )


def _chunks(jobs: Sequence[JobIn]) -> Iterator[Sequence[JobIn]]:
    """``jobs`` in transactions: each job's item, a counter item per batch (at most one per
    job) and the record's, within DynamoDB's item limit."""
    size = (MAX_TRANSACT_ITEMS - 1) // 2
    for start in range(0, len(jobs), size):
        yield jobs[start : start + size]
