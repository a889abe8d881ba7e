"""Waiting for a batch to complete (``chatbatch collect --wait``): its counters polled with
backoff until every job of its registered total is final, or a timeout.

The counters are the truth the worker keeps (``Batches.transition``); the completion event
is decided from the same counters (``state.completion``), so ``--wait`` returns when the
event goes out, whether or not events are enabled.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from chatbatch.state.batches import Batches, BatchInfo

FIRST_POLL_S = 0.5
MAX_POLL_S = 10.0
BACKOFF = 1.5


class NoTotal(ValueError):
    """The batch has no registered total: nothing can tell when it is complete."""

    def __init__(self, batch_id: str) -> None:
        super().__init__(
            f"batch {batch_id!r} has no registered total (its jobs were sent without "
            "`chatbatch submit`, e.g. a daily default batch): --wait cannot tell when it is "
            "complete; run collect without --wait, or submit the jobs under a batch id"
        )


@dataclass
class Clock:
    """Time for the waiter (tests give it a fake one)."""

    now: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep


def wait_until_complete(
    batches: Batches,
    batch_id: str,
    *,
    timeout_s: float | None,
    on_poll: Callable[[BatchInfo], None] | None = None,
    clock: Clock | None = None,
) -> tuple[BatchInfo, bool]:
    """Poll the batch's counters (0.5 s, then 1.5x longer each time, at most 10 s) until
    it is complete; (its last counters, complete?), False after ``timeout_s``.
    Raises ``NoTotal`` for a batch without a registered total."""
    clock = clock or Clock()
    deadline = None if timeout_s is None else clock.now() + timeout_s
    pause = FIRST_POLL_S
    while True:
        info = batches.get(batch_id) or BatchInfo(batch_id=batch_id)
        if info.total is None:
            raise NoTotal(batch_id)
        if on_poll:
            on_poll(info)
        if info.complete:
            return info, True
        if deadline is not None and clock.now() >= deadline:
            return info, False
        left = None if deadline is None else deadline - clock.now()
        clock.sleep(pause if left is None else max(0.0, min(pause, left)))
        pause = min(pause * BACKOFF, MAX_POLL_S)
