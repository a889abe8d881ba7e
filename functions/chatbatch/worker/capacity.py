"""Rate-limit capacity for the jobs of one invocation, in as few DynamoDB writes as possible.

The jobs of an SQS batch run concurrently and reach the rate limiter at slightly
different moments. ``Capacity`` waits until every job of the invocation has either asked
for capacity or left the pipeline before it (failed, cached, deferred), then asks the
limiter for all of them at once: one lease, one conditional write for ten jobs, and one
more write at the end for what they give back. A job that was told to wait asks again
on its own and is served at once (with whoever asks in the same tick).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict

from chatbatch.core.config import Priority
from chatbatch.state.limiter.lease import Lease
from chatbatch.state.limiter.limiter import RateLimiter, RequestTooLargeError

FLUSH_AFTER_S = 1.0  # a safety net: every job asks or leaves, and then it flushes at once

Slot = tuple[Lease, int]  # the lease and the job's index in it


class Capacity:
    def __init__(self, limiter: RateLimiter, priority: Priority, jobs: int) -> None:
        self._limiter = limiter
        self._priority = priority
        self._undecided = jobs
        self._pending: dict[str, list[tuple[int, asyncio.Future[Slot | float]]]] = defaultdict(list)
        self._timer: asyncio.TimerHandle | None = None
        self.leases: list[Lease] = []
        self.writes = 0

    def leave(self) -> None:
        """A job will not ask (it ended before the rate limit)."""
        self._undecided -= 1
        self._maybe_flush()

    async def take(self, model: str, tokens: int, *, first: bool = True) -> Slot | float:
        """A slot in a lease, or how long to wait before asking again."""
        future: asyncio.Future[Slot | float] = asyncio.get_running_loop().create_future()
        self._pending[model].append((tokens, future))
        if first:
            self._undecided -= 1
            self._maybe_flush()
        else:
            self._schedule(0)
        return await future

    def _maybe_flush(self) -> None:
        if not self._pending:
            return
        self._schedule(0 if self._undecided <= 0 else FLUSH_AFTER_S)

    def _schedule(self, delay: float) -> None:
        if self._timer is not None and delay > 0:
            return
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(delay, lambda: loop.create_task(self._flush()))

    async def _flush(self) -> None:
        self._timer = None
        pending, self._pending = self._pending, defaultdict(list)
        await asyncio.gather(*(self._lease(model, asks) for model, asks in pending.items()))

    async def _lease(
        self, model: str, asks: list[tuple[int, asyncio.Future[Slot | float]]]
    ) -> None:
        try:
            lease = await self._ask(model, [tokens for tokens, _ in asks])
        except RequestTooLargeError as err:
            if len(asks) == 1:
                asks[0][1].set_exception(err)
                return
            await asyncio.gather(*(self._lease(model, [ask]) for ask in asks))
            return
        except Exception as err:  # the limiter's table is unreachable: every ask fails
            for _, future in asks:
                future.set_exception(err)
            return
        for index, (_, future) in enumerate(asks):
            future.set_result((lease, index) if index < lease.granted else lease.wait_s)

    async def _ask(self, model: str, tokens: list[int]) -> Lease:
        lease = await asyncio.to_thread(self._limiter.lease, model, self._priority, tokens)
        self.writes += 1
        if lease.granted:
            self.leases.append(lease)
        return lease

    async def close(self) -> None:
        """Give back, in one write per lease, what the jobs did not use."""
        if self.leases:
            await asyncio.gather(*(asyncio.to_thread(lease.close) for lease in self.leases))
