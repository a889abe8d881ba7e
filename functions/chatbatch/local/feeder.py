"""Feeding a local run's jobs to their queues: ``Feeder``, and ``unfinished`` (what a
resumed run still has to send).

moto's SQS slows down with queue depth (it rescans every stored message on each send and
receive), so instead of pouring the whole file into the queues, each priority's queue is
fed from its own backlog and kept at most ``FEED_DEPTH`` messages deep. Priority order
survives, since every priority has its own feeder.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice

from chatbatch.core.config import Priority
from chatbatch.core.jobs import Job
from chatbatch.state.batches import Batches, JobState
from chatbatch.state.sender import Sender

FEED_DEPTH = 100
LOOKUP = 100  # job states read per BatchGetItem


@dataclass
class Feeder:
    """Keeps one priority's queue at most ``depth`` deep from a local backlog."""

    priority: Priority
    sender: Sender
    depth: int = FEED_DEPTH
    backlog: deque[Job] = field(default_factory=deque)
    in_queue: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    on_sent: Callable[[], None] = lambda: None  # the queue's mapping polls at once

    def done(self, n: int) -> None:
        with self.lock:
            self.in_queue = max(0, self.in_queue - n)

    def pump(self) -> bool:
        """Send what fits; True while a backlog remains."""
        while self.backlog:
            with self.lock:
                room = self.depth - self.in_queue
            if room < 10 and self.in_queue:
                return True
            chunk = [self.backlog.popleft() for _ in range(min(10, len(self.backlog)))]
            self.sender.send(self.priority, chunk)
            with self.lock:
                self.in_queue += len(chunk)
            self.on_sent()
        return False


@dataclass
class Unfinished:
    """The jobs of a resumed run still to send: not final (their answer or error is
    stored, or they are dead letters) and not already queued (a message the replay
    sent again carries them). ``kept`` counts the final ones skipped."""

    batches: Batches
    queued: set[tuple[str, str]]
    kept: int = 0

    def __call__(self, jobs: Iterable[Job]) -> Iterator[Job]:
        it = iter(jobs)
        while chunk := list(islice(it, LOOKUP)):
            keys = [(job.batch_id or "", job.custom_id) for job in chunk]
            states, _ = self.batches.prefetch(keys)
            for job, key in zip(chunk, keys, strict=True):
                state = states[key]
                if state.terminal or state is JobState.dead_lettered:
                    self.kept += 1
                elif key not in self.queued:
                    yield job
