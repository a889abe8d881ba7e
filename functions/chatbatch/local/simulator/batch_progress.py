"""How a batch runs, whichever provider's API carries it (``Run``): its lines are answered
one by one over ``batch_turnaround_s`` (line i of n at (i + 1) / n of it), until all are
answered (then, after ``batch_finalize_s``, it has completed), or a cancel stops them (it
ends ``batch_cancel_s`` later), or its window runs out (it expires), or an admin fails it.

Time is the engine's clock, read by the caller and passed in: a run advances lazily, when a
request arrives (no background thread), and answers in one step every line that fell due
since, each through the engine's own generation. A line not answered when the run stops is
never generated: a cancelled or expired line is not billed, as the providers bill only
what they finished.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from chatbatch.local.simulator.settings import SimulatorSettings


class Phase(StrEnum):
    """Where a run is; the provider modules name these their own way."""

    in_progress = "in_progress"
    finalizing = "finalizing"  # every line answered, the output not published yet
    cancelling = "cancelling"
    completed = "completed"
    cancelled = "cancelled"
    expired = "expired"
    failed = "failed"


ENDED = frozenset({Phase.completed, Phase.cancelled, Phase.expired, Phase.failed})


@dataclass
class Run:
    """A batch's ``count`` lines on the clock; ``answered`` of them have their outcome."""

    started: float
    count: int
    turnaround_s: float
    expire_at: float
    finalize_s: float = 0.0
    cancel_s: float = 0.0
    answered: int = 0
    cancel_at: float | None = None
    ended: Phase | None = None
    ended_at: float | None = None

    @classmethod
    def start(cls, now: float, count: int, settings: SimulatorSettings) -> Run:
        """A run of ``count`` lines from ``now``, timed by the settings of the moment."""
        return cls(
            started=now,
            count=count,
            turnaround_s=settings.batch_turnaround_s,
            expire_at=now + settings.batch_expire_after_s,
            finalize_s=settings.batch_finalize_s,
            cancel_s=settings.batch_cancel_s,
        )

    def due(self, index: int) -> float:
        """When line ``index`` is answered, unless the run stops first."""
        return self.started + self.turnaround_s * (index + 1) / self.count

    def _due_by(self, moment: float) -> int:
        if self.turnaround_s <= 0 or moment >= self.started + self.turnaround_s:
            return self.count  # (and no division by a vanishing turnaround)
        share = (moment - self.started) / self.turnaround_s * self.count
        return min(self.count, max(0, math.floor(share + 1e-9)))

    def advance(self, now: float, answer: Callable[[int], None]) -> None:
        """Answer every line due by ``now`` (none after a cancel or the expiry), then end
        the run if its time has come."""
        if self.ended is not None:
            return
        stop = min(now, self.expire_at)
        if self.cancel_at is not None:
            stop = min(stop, self.cancel_at)
        for index in range(self.answered, self._due_by(stop)):
            answer(index)
            self.answered = index + 1
        if self.answered == self.count:
            done = self.due(self.count - 1) + self.finalize_s
            if now >= done:
                self._end(Phase.completed, done)
        elif self.cancel_at is not None and now > self.cancel_at + self.cancel_s:
            # strictly after: the cancel's own answer is always cancelling, as the APIs answer
            self._end(Phase.cancelled, self.cancel_at + self.cancel_s)
        elif now >= self.expire_at:
            self._end(Phase.expired, self.expire_at)

    def _end(self, phase: Phase, at: float) -> None:
        self.ended, self.ended_at = phase, at

    def phase(self, now: float) -> Phase:
        if self.ended is not None:
            return self.ended
        if self.answered == self.count:
            return Phase.finalizing
        return Phase.in_progress if self.cancel_at is None else Phase.cancelling

    def cancel(self, now: float) -> None:
        self.cancel_at = now if self.cancel_at is None else self.cancel_at

    def expire_now(self, now: float, answer: Callable[[int], None]) -> None:
        """An admin's expiry: the lines due by now are answered, the others expire."""
        self.advance(now, answer)
        if self.ended is None:
            self.expire_at = min(self.expire_at, now)
            self._end(Phase.expired, now)

    def fail_now(self, now: float, answer: Callable[[int], None]) -> None:
        """An admin's failure: the lines due by now are answered, the others never are."""
        self.advance(now, answer)
        if self.ended is None:
            self._end(Phase.failed, now)
