"""The final transactions of an invocation's jobs, committed together (a group commit).

A job that ends with an answer (``results.finish``) has one final transaction: its state
``succeeded``, its reservation settled, and additions to two items every job shares, the
day's ledger and its batch's counters. One by one, each job writes each shared item once
(two write units each in a transaction, and the hottest items of a deployment). Here the
jobs of one invocation that reach their final transaction wait for each other until every
job of the invocation has either arrived or ended another way (``leave``), and the last
one commits all of them in one transaction: each job's own items, and one write per
ledger and per batch for the sum of their additions.

All or nothing, as each job's alone would be: when any condition fails (another copy of
a job moved it, a reservation was reclaimed) or the items do not make one transaction
(two messages of one job in the invocation), nothing is written and every job makes its
own transaction (``results._settle``), which sorts each case out. A job that arrives
alone goes straight to its own.

The jobs' results and cost records are written here too, once per invocation: before the
transaction, one object per batch (``results/<batch>/<flush>.jsonl``) and one per day and
batch (``costs/dt=<day>/<batch>/<flush>.jsonl``) hold every arrived job's lines (a job
alone too), named by the invocation's flush id (``flush``, also recorded on each
reservation its calls go out under: ``Budget.arm``). The transaction that makes a job
``succeeded`` sets its item's ``flush`` to the flush whose objects hold its lines, so a
line elsewhere (a copy whose transaction lost) is an orphan that readers drop. To keep
those rare, once every job of a refused group has made its own transaction (``settled``),
the objects are written again without the lines of the jobs that lost.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from aws_lambda_powertools import Logger

from chatbatch.core.output_lines import CostRecord, OutputLine
from chatbatch.core.resources import TABLE_PK, TABLE_SK
from chatbatch.state.batches import JobState
from chatbatch.state.budget.ledger import Item
from chatbatch.state.budget.reservations import MarkerAt, Reservation
from chatbatch.state.ddb import MAX_TRANSACT_ITEMS
from chatbatch.state.store import flush_cost_key, flush_of, flush_result_key
from chatbatch.worker.crash import WorkerCrash, crash_point
from chatbatch.worker.intake import Intake
from chatbatch.worker.services import Services

logger = Logger(service="chatbatch")


@dataclass
class Lines:
    """What a job's success stores: its result line and its cost record (``None`` in a
    ``Final`` whose lines a flush object already holds: a job recovered from one)."""

    result: OutputLine
    cost: CostRecord


@dataclass
class Final:
    """One job's final transaction, in parts: its own conditional items (its state, its
    reservation), the additions to the ledgers, and those to its batch's counters; and
    the lines it stores, in the objects of ``flush`` (``Finals.place``)."""

    job: str  # its job key
    batch_id: str
    own: list[Item]
    ledgers: list[tuple[Item, dict[str, int]]]
    counters: dict[str, int]
    shard: int | None = None  # the counter shard they go to (``Invocation.counter_shard``)
    custom_id: str = ""  # its id in the batch (to read its state back: ``_holds``)
    intake: Intake | None = None  # its job (for the crash point after the objects' write)
    flush: str = ""
    lines: Lines | None = None


@dataclass
class _Group:
    """The jobs flushed together, and (once the group's transaction was refused) which
    of them committed on their own."""

    finals: dict[str, Final]  # by message id
    outcomes: dict[str, bool] = field(default_factory=dict)  # by message id


class Finals:
    """The group commit of one invocation (see the module docstring)."""

    def __init__(self, services: Services, jobs: Iterable[str]) -> None:
        self._services = services
        self.flush = uuid.uuid4().hex  # the invocation's flush id: its objects' names
        self._running = set(jobs)  # message ids not yet arrived nor left
        self._arrived: list[tuple[str, Final, asyncio.Future[bool]]] = []  # by message id
        self._flushes: list[asyncio.Task[None]] = []
        self._placed: dict[str, set[str]] = {}  # flush id -> the jobs whose lines it holds
        self._objects: dict[str, list[tuple[str, str]]] = {}  # key -> (job, line)
        self._groups: dict[str, _Group] = {}  # by message id, until the job settled
        self._marker: tuple[MarkerAt, frozenset[str]] | None = None  # a group's, its jobs
        self._marker_closed = False
        self._committed: set[str] = set()  # the jobs committed in the group's transactions

    def cover(self, at: MarkerAt, jobs: Iterable[str]) -> None:
        """The jobs reserved together under one open marker (``Budget.reserve_many``): the
        group's transaction closes it when they all settle in it; else ``end`` does."""
        self._marker = (at, frozenset(jobs))

    def place(self, job: str) -> str:
        """The flush whose objects will hold ``job``'s lines: the invocation's, unless
        another message of the same job has its lines there already (then one of its
        own: a job has one line per object)."""
        flush = self.flush
        while job in self._placed.setdefault(flush, set()):
            flush = uuid.uuid4().hex
        self._placed.setdefault(flush, set()).add(job)
        return flush

    async def commit(self, job: str, final: Final) -> bool:
        """Wait for the invocation's other jobs; True once committed with them, False when
        this job has to make its own transaction (alone, or the group's was refused), and
        then tell ``settled`` how it went. Raises what the objects' writes raised (the
        job goes back to its queue) and a crash at ``after_s3_write``."""
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._arrived.append((job, final, done))
        self.leave(job)
        return await done

    async def settled(self, job: str, committed: bool) -> bool:
        """``job`` (a message id) made its own final transaction, committed or not; once
        every job of its group has, the lines of those that lost leave the objects.
        Returns whether the job's final transaction committed: its own, or the group's
        whose reply was lost (its own then met the job done: ``_holds``)."""
        group = self._groups.pop(job, None)
        if group is None:
            return committed
        committed = committed or await self._holds(group.finals[job])
        group.outcomes[job] = committed
        if len(group.outcomes) < len(group.finals):
            return committed
        lost = {
            (f.job, f.flush) for m, f in group.finals.items() if f.lines and not group.outcomes[m]
        }
        keys = []
        for key, lines in self._objects.items():
            kept = [(j, line) for j, line in lines if (j, flush_of(key)) not in lost]
            if len(kept) < len(lines):
                self._objects[key] = kept
                keys.append(key)
        await asyncio.gather(*(asyncio.to_thread(self._write, key) for key in keys))
        return committed

    async def _holds(self, final: Final) -> bool:
        """Whether the job's item is ``succeeded`` with ``final``'s flush: then the group's
        transaction that held it committed although it raised (its reply lost), and the
        lines in that flush's objects are the job's, to keep."""
        if not final.custom_id or final.lines is None:
            return False
        batches = self._services.batches
        [record] = await asyncio.to_thread(batches.jobs, final.batch_id, [final.custom_id])
        return record.state is JobState.succeeded and record.flush == final.flush

    def leave(self, job: str) -> None:
        """``job`` will not arrive (it ended another way), or has: when no job is left
        running, the arrived ones are committed."""
        self._running.discard(job)
        if self._running or not self._arrived:
            return
        group, self._arrived = self._arrived, []
        self._flushes.append(asyncio.get_running_loop().create_task(self._flush(group)))

    async def _flush(self, group: list[tuple[str, Final, asyncio.Future[bool]]]) -> None:
        finals = [final for _, final, _ in group]
        try:
            await self._store(finals)
            for final in finals:
                if final.intake is not None:
                    crash_point("after_s3_write", final.intake)
        except (Exception, WorkerCrash) as err:  # each job raises it: retried, or the crash
            for _, _, done in group:
                done.set_exception(err)
            return
        try:
            chunks = self._chunks(finals) if len(group) > 1 else None
        except Exception:  # each job's own transaction will meet it again, and say so
            logger.exception("the invocation's final transactions could not be made")
            chunks = None
        if chunks is None:  # alone, or two parts for one item: each job on its own
            self._alone(group)
            return
        try:
            for chunk in chunks:
                await self._commit([group[index] for index in chunk])
        except WorkerCrash as err:  # the instance died between two of them: every job
            for _, _, done in group:  # still waiting dies with it (never goes on alone)
                if not done.done():
                    done.set_exception(err)

    async def _commit(self, part: list[tuple[str, Final, asyncio.Future[bool]]]) -> None:
        """One transaction of the group's: its jobs committed together, or each on its own
        (whatever failed; a crash, a ``BaseException``, stops the invocation instead)."""
        committed = False
        try:
            if len(part) > 1:
                items = self._items([final for _, final, _ in part])
                committed = await asyncio.to_thread(self._services.batches.commit, items)
            if committed:
                self._committed |= {final.job for _, final, _ in part}
                self._marker_closed |= self._closes_marker()
        except Exception:  # each job's own transaction will meet it again, and say so
            logger.exception("the invocation's final transactions failed together")
        if committed:
            for _, _, done in part:
                if not done.done():
                    done.set_result(True)
        else:
            self._alone(part)

    def _alone(self, part: list[tuple[str, Final, asyncio.Future[bool]]]) -> None:
        """Each job of ``part`` commits on its own, then says how it went (``settled``)."""
        state = _Group({message: final for message, final, _ in part})
        self._groups |= dict.fromkeys(state.finals, state)
        for _, _, done in part:
            if not done.done():
                done.set_result(False)

    async def _store(self, finals: list[Final]) -> None:
        """The group's lines into their flush objects: one PUT per object, each holding
        every line it has (of this and any earlier group of the invocation). The cost
        records first: a results object found after a crash (``results.recover``) always
        has its costs beside it."""
        costs: set[str] = set()
        results: set[str] = set()
        for final in finals:
            if final.lines is None:  # recovered: its lines are stored already
                continue
            result, cost = final.lines.result, final.lines.cost
            for keys, key, line in (
                (
                    costs,
                    flush_cost_key(cost.dt, final.batch_id, final.flush),
                    cost.model_dump_json(),
                ),
                (results, flush_result_key(final.batch_id, final.flush), result.to_line()),
            ):
                self._objects.setdefault(key, []).append((final.job, line))
                keys.add(key)
        for keys in (costs, results):
            await asyncio.gather(*(asyncio.to_thread(self._write, key) for key in sorted(keys)))

    def _write(self, key: str) -> None:
        """Write the object ``key`` with its lines now (empty once none is left: the worker
        may put objects, never delete them)."""
        self._services.store.put_lines(key, [line for _, line in self._objects[key]])

    def _closes_marker(self, finals: Iterable[Final] = ()) -> bool:
        """Whether the group's marker names no job but those committed and ``finals``."""
        return self._marker is not None and self._marker[1] <= self._committed | {
            f.job for f in finals
        }

    async def end(self, unused: Iterable[Reservation]) -> None:
        """After the invocation's jobs: reservations made ahead and never used go back, and
        the group's marker goes unless the group's transaction closed it, or a reservation
        it names is still open (a job handed back keeping it, a job that raised, a copy
        that took one over): then it stays, for ``reclaim``. A worker that dies before
        leaves the marker for ``reclaim`` too."""
        budget = self._services.budget
        for r in unused:
            await asyncio.to_thread(budget.release, r)
        if self._marker is not None and not self._marker_closed:
            at, jobs = self._marker
            await asyncio.to_thread(budget.close_group_marker, at, sorted(jobs))

    def _chunks(self, finals: list[Final]) -> list[list[int]] | None:
        """``finals`` (their indexes) in transactions of at most DynamoDB's item limit,
        in order, each job's own items in one of them (and room kept for the marker's
        delete, which the last may carry); None if two jobs touch one item."""
        own = [item for final in finals for item in final.own]
        if len({_target(item) for item in own}) < len(own):
            return None
        chunks: list[list[int]] = [[]]
        for index in range(len(finals)):
            chunk = [*chunks[-1], index]
            if chunks[-1] and len(self._items([finals[i] for i in chunk])) >= MAX_TRANSACT_ITEMS:
                chunks.append([index])
            else:
                chunks[-1] = chunk
        return chunks

    def _items(self, finals: list[Final]) -> list[Item]:
        """The one transaction of ``finals``: their own items, one write of the sums per
        ledger and per batch counter, and the group's marker if this closes it."""
        own = [item for final in finals for item in final.own]
        ledgers = self._services.budget.ledger_items(
            addition for final in finals for addition in final.ledgers
        )
        counters: dict[tuple[str, int | None], dict[str, int]] = {}
        for final in finals:
            total = counters.setdefault((final.batch_id, final.shard), {})
            for name, delta in final.counters.items():
                total[name] = total.get(name, 0) + delta
        batches = self._services.batches
        shared = [
            item
            for (b, shard), deltas in counters.items()
            for item in batches.count_items(b, deltas, shard)
        ]
        if self._marker is not None and self._closes_marker(finals):
            shared.append(self._services.budget.close_marker_item(self._marker[0]))
        return [*own, *ledgers, *shared]


def _target(item: Item) -> tuple[str, str, str]:
    """The table and key of the item a transaction's item writes."""
    (action,) = item.values()
    fields: dict[str, Any] = action
    key = fields.get("Key") or fields["Item"]
    return fields["TableName"], key[TABLE_PK]["S"], key[TABLE_SK]["S"]
