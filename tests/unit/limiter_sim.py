"""A shared simulated clock and worker harness for the limiter's tests.

Simulated time: a thread only "sleeps" (the provider call, a denial's wait) through the
``SimClock``; time jumps to the next wake-up once every thread is asleep. The DynamoDB
calls between sleeps happen at one simulated instant, concurrently across threads, so
the races are real and minutes of traffic run in seconds.
"""

from __future__ import annotations

import random
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from chatbatch.core.config import Config, Priority
from chatbatch.state.limiter.lease import Lease
from chatbatch.state.limiter.limiter import RateLimiter
from chatbatch.state.limiter.policy import WINDOW_S

if TYPE_CHECKING:
    from conftest import Dynamo

START = 1_764_288_000.0  # 2025-11-28T00:00:00Z
MODEL = "test-model"


class SimClock:
    """Shared simulated time: advances only when every enrolled thread is asleep."""

    def __init__(self, start: float = START) -> None:
        self._now = start
        self._cv = threading.Condition()
        self._live = 0
        self._sleeping: dict[object, float] = {}

    def __call__(self) -> float:
        return self._now

    def sleep(self, seconds: float) -> None:
        token = object()
        with self._cv:
            self._sleeping[token] = self._now + max(seconds, 0.0)
            self._advance()
            while token in self._sleeping:
                self._cv.wait()

    def run(self, targets: Sequence[Callable[[], None]]) -> None:
        """Run the targets in threads on this clock; re-raise the first failure."""
        errors: list[BaseException] = []

        def enrolled(target: Callable[[], None]) -> None:
            try:
                target()
            except BaseException as err:
                errors.append(err)
            finally:
                with self._cv:
                    self._live -= 1
                    self._advance()

        with self._cv:
            self._live += len(targets)
        threads = [threading.Thread(target=enrolled, args=(t,)) for t in targets]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]

    def _advance(self) -> None:
        if self._sleeping and len(self._sleeping) >= self._live:
            self._now = max(self._now, min(self._sleeping.values()))
            for token, wake in list(self._sleeping.items()):
                if wake <= self._now:
                    del self._sleeping[token]
            self._cv.notify_all()


def with_model(config: Config, rpm: int, tpm: int) -> Config:
    base = config.models["deepseek-chat"]
    model = base.model_copy(update={"rpm": rpm, "tpm": tpm, "model_id": MODEL})
    return config.model_copy(update={"models": {**config.models, MODEL: model}})


def windows(events: Sequence[tuple[float, int]], width: float = WINDOW_S) -> Iterator[int]:
    """The sum of ``events`` (time, amount) in each window ``[t, t + width)``, t an event."""
    ordered = sorted(events)
    total, j = 0, 0
    for i, (start, _) in enumerate(ordered):
        while j < len(ordered) and ordered[j][0] < start + width:
            total += ordered[j][1]
            j += 1
        yield total
        total -= ordered[i][1]


def in_range(events: Sequence[tuple[float, int]], start: float, end: float) -> int:
    return sum(n for t, n in events if start <= t - START < end)


def per_minute(book: Book) -> dict[Priority, float]:
    """Requests per minute of each priority over two whole windows (61 one-second slots):
    what a priority got in one minute comes back to it one window later."""
    return {p: in_range(book.requests[p], 0, 122) * 60 / 122 for p in Priority}


@dataclass
class Book:
    """Net usage (what the provider saw) per priority: requests when sent, tokens by the
    time of their grant (the limiter's windows)."""

    requests: dict[Priority, list[tuple[float, int]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    tokens: dict[Priority, list[tuple[float, int]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    denials: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, priority: Priority, at: float, requests: int, tokens: int) -> None:
        with self.lock:
            self.requests[priority].append((at, requests))
            self.tokens[priority].append((at, tokens))

    def all(self, metric: str) -> list[tuple[float, int]]:
        book = self.requests if metric == "r" else self.tokens
        return [event for events in book.values() for event in events]


@dataclass
class Hammer:
    """Threads that want more than the limit: lease a batch, call, reconcile, repeat."""

    clock: SimClock
    book: Book
    sizes: tuple[int, int]  # estimated tokens per job
    end: float
    latency_s: float = 2.0
    usage: tuple[float, float] = (0.4, 1.0)  # real tokens / estimate

    def worker(
        self, limiter: RateLimiter, priority: Priority, batch: int, seed: int
    ) -> Callable[[], None]:
        rng = random.Random(seed)

        def run() -> None:
            while self.clock() < self.end:
                lease = limiter.lease(MODEL, priority, [rng.randint(*self.sizes)] * batch)
                if not lease:
                    with self.book.lock:
                        self.book.denials += 1
                    self.clock.sleep(lease.wait_s + rng.uniform(0, 0.3))
                    continue
                self.call(lease, rng)

        return run

    def call(self, lease: Lease, rng: random.Random) -> None:
        """Send each job at the time the limiter spaced it to (requests booked then, as the
        provider sees them; tokens at the grant, as the limiter books them), then reconcile."""
        at, used = self.clock(), 0
        sent = [i for i in range(lease.granted) if rng.random() >= 0.03]
        for i in range(lease.granted):
            if i not in sent:  # not sent after all (e.g. the batch ran out of time)
                lease.release(i)
        for i in sent:
            self.clock.sleep(lease.send_at(i) - self.clock())
            self.book.add(lease.grant.priority, self.clock(), 1, 0)
        self.clock.sleep(self.latency_s)
        for i in sent:
            real = int(lease.grant.tokens[i] * rng.uniform(*self.usage))
            lease.reconcile(i, real)
            used += real
        lease.close()
        self.book.add(lease.grant.priority, at, 0, used)


def send_jobs(
    clock: SimClock, limiter: RateLimiter, priority: Priority, jobs: int, book: Book
) -> float:
    """As the worker does for one invocation: lease capacity for the jobs that wait, send
    each granted one at its spaced time, and let the rest ask again after the denial's
    wait. Returns the time of the last send."""
    last, waiting = clock(), jobs
    while waiting:
        lease = limiter.lease(MODEL, priority, [100] * waiting)
        for i in range(lease.granted):
            clock.sleep(lease.send_at(i) - clock())
            book.add(priority, clock(), 1, 0)
        last = clock()
        lease.close()
        waiting -= lease.granted
        if waiting:
            clock.sleep(lease.wait_s)
    return last


def limiters(dynamo: Dynamo, config: Config, clock: SimClock, n: int) -> list[RateLimiter]:
    """``n`` worker instances, each with its own cache, all on one table."""
    return [
        RateLimiter(dynamo.client, dynamo.table, config, clock=clock, rng=random.Random(i))
        for i in range(n)
    ]
