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
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aws_lambda_powertools import Logger

from chatbatch.core.resources import TABLE_PK, TABLE_SK
from chatbatch.state.budget.ledger import Item
from chatbatch.state.budget.reservations import Reservation
from chatbatch.worker.services import Services

logger = Logger(service="chatbatch")


@dataclass
class Final:
    """One job's final transaction, in parts: its own conditional items (its state, its
    reservation), the additions to the ledgers, and those to its batch's counters."""

    job: str  # its job key
    batch_id: str
    own: list[Item]
    ledgers: list[tuple[Item, dict[str, int]]]
    counters: dict[str, int]


class Finals:
    """The group commit of one invocation (see the module docstring)."""

    def __init__(self, services: Services, jobs: Iterable[str]) -> None:
        self._services = services
        self._running = set(jobs)  # message ids not yet arrived nor left
        self._arrived: list[tuple[Final, asyncio.Future[bool]]] = []
        self._flushes: list[asyncio.Task[None]] = []
        self._marker: tuple[str, str, frozenset[str]] | None = None  # day, marker, its jobs
        self._marker_closed = False

    def cover(self, day: str, marker: str, jobs: Iterable[str]) -> None:
        """The jobs reserved together under one open marker (``Budget.reserve_many``): the
        group's transaction closes it when they all settle in it; else ``end`` does."""
        self._marker = (day, marker, frozenset(jobs))

    async def commit(self, job: str, final: Final) -> bool:
        """Wait for the invocation's other jobs; True once committed with them, False when
        this job has to make its own transaction (alone, or the group's was refused)."""
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._arrived.append((final, done))
        self.leave(job)
        return await done

    def leave(self, job: str) -> None:
        """``job`` will not arrive (it ended another way), or has: when no job is left
        running, the arrived ones are committed."""
        self._running.discard(job)
        if self._running or not self._arrived:
            return
        group, self._arrived = self._arrived, []
        self._flushes.append(asyncio.get_running_loop().create_task(self._flush(group)))

    async def _flush(self, group: list[tuple[Final, asyncio.Future[bool]]]) -> None:
        committed = False
        try:
            items = self._items([final for final, _ in group]) if len(group) > 1 else None
            if items is not None:
                committed = await asyncio.to_thread(self._services.batches.commit, items)
            if committed and self._closes_marker([final for final, _ in group]):
                self._marker_closed = True
        except Exception:  # each job's own transaction will meet it again, and say so
            logger.exception("the invocation's final transactions failed together")
        finally:  # every waiting job goes on, whatever happened
            for _, done in group:
                if not done.done():
                    done.set_result(committed)

    def _closes_marker(self, finals: list[Final]) -> bool:
        return self._marker is not None and self._marker[2] <= {f.job for f in finals}

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
            day, marker, jobs = self._marker
            await asyncio.to_thread(budget.close_group_marker, day, marker, sorted(jobs))

    def _items(self, finals: list[Final]) -> list[Item] | None:
        """The one transaction of ``finals``; None if two of them touch one item."""
        own = [item for final in finals for item in final.own]
        touched = {_target(item) for item in own}
        if len(touched) < len(own):
            return None
        ledgers = self._services.budget.ledger_items(
            addition for final in finals for addition in final.ledgers
        )
        counters: dict[str, dict[str, int]] = {}
        for final in finals:
            total = counters.setdefault(final.batch_id, {})
            for name, delta in final.counters.items():
                total[name] = total.get(name, 0) + delta
        batches = self._services.batches
        shared = [item for b, deltas in counters.items() for item in batches.count_items(b, deltas)]
        if self._marker is not None and self._closes_marker(finals):
            day, marker, _ = self._marker
            shared.append(self._services.budget.close_marker_item(day, marker))
        return [*own, *ledgers, *shared]


def _target(item: Item) -> tuple[str, str, str]:
    """The table and key of the item a transaction's item writes."""
    (action,) = item.values()
    fields: dict[str, Any] = action
    key = fields.get("Key") or fields["Item"]
    return fields["TableName"], key[TABLE_PK]["S"], key[TABLE_SK]["S"]
