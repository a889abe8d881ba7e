"""``ShiftedClock``: real time moved by an offset, for tests that cross UTC midnight (the
workers' budget clock, the budget pause's and the local resume schedule's)."""

from __future__ import annotations

import time


class ShiftedClock:
    """The workers' budget clock: real time, moved by ``offset`` seconds."""

    def __init__(self) -> None:
        self.offset = 0.0

    def at(self, when: float) -> None:
        self.offset = when - time.time()

    def __call__(self) -> float:
        return time.time() + self.offset
