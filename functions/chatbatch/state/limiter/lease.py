"""Capacity held for some jobs of a batch: the ``Grant`` one write gave, and its ``Lease``.

The worker reconciles or releases each job of a lease locally; ``close`` hands the net
give-back to the limiter, which writes it once (see "Leases" and "Reconcile" in the
design note of ``chatbatch.state.limiter``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from pydantic import BaseModel, ConfigDict

from chatbatch.core.config import Priority


class Grant(BaseModel):
    """What one conditional write gave: capacity for the first ``granted`` jobs asked for."""

    model_config = ConfigDict(frozen=True)

    model: str
    priority: Priority
    shard: int
    slot: int  # the one-second slot the usage was booked in
    tokens: tuple[int, ...]  # estimated tokens of each granted job, in order
    starts: tuple[float, ...] = ()  # when each may be sent (epoch s): sends are spaced
    spacing_s: float = 0.0  # the shard's seconds between two sends when granted (0: none)
    asked: int  # jobs asked for
    wait_s: float  # 0 when all were granted; else wait this long before asking again
    reason: str | None = None  # why not (all): window, pace, priority, adaptive, contention


GiveBack = Callable[[Grant, int, int], None]  # writes (grant, requests, tokens) given back
Unsent = Callable[[Grant, int], None]  # job ``index`` of the grant will not be sent


class Lease:
    """Capacity held for some jobs of a batch; give back what is not used with ``close``.

    ``reconcile(i, used)`` records job ``i``'s real usage, ``release(i)`` a job that will
    never be sent (its request and tokens go back, its send time to the next grant). Jobs
    left unreported count as used at their estimate. ``close`` writes the net give-back in
    one request (none if nothing changed); the lease is also a context manager. Safe to
    share between threads.
    """

    def __init__(self, grant: Grant, give_back_to: GiveBack, unsent: Unsent | None = None) -> None:
        self.grant = grant
        self._give_back_to = give_back_to
        self._unsent = unsent
        self._used: dict[int, int] = {}
        self._released: set[int] = set()
        self._closed = False
        self._lock = threading.Lock()

    @property
    def granted(self) -> int:
        """How many jobs (the first ones asked for) may be sent."""
        return len(self.grant.tokens)

    @property
    def wait_s(self) -> float:
        return self.grant.wait_s

    def __bool__(self) -> bool:
        return self.granted > 0

    def __repr__(self) -> str:
        return f"Lease({self.grant.model}, {self.granted}/{self.grant.asked} jobs)"

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send_at(self, index: int) -> float:
        """When job ``index`` may be sent (epoch seconds; 0 for "now")."""
        self._check(index)
        return self.grant.starts[index] if index < len(self.grant.starts) else 0.0

    def reconcile(self, index: int, used_tokens: int) -> None:
        self._check(index)
        with self._lock:
            self._used[index] = max(0, used_tokens)
            self._released.discard(index)

    def release(self, index: int) -> None:
        """Job ``index`` is not sent: its request and tokens go back, its send time to the
        instance's next grant (so reconcile it no more)."""
        self._check(index)
        with self._lock:
            new = index not in self._released
            self._released.add(index)
            self._used.pop(index, None)
        if new and self._unsent is not None:
            self._unsent(self.grant, index)

    def give_back(self) -> tuple[int, int]:
        """(requests, tokens) that ``close`` returns; tokens may be negative (extra usage)."""
        with self._lock:
            tokens = self.grant.tokens
            requests = len(self._released)
            back = sum(tokens[i] for i in self._released)
            back += sum(tokens[i] - used for i, used in self._used.items())
            return requests, back

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self.granted:
            self._give_back_to(self.grant, *self.give_back())

    def _check(self, index: int) -> None:
        if not 0 <= index < self.granted:
            raise IndexError(f"job {index} is not in this lease of {self.granted}")
        if self._closed:
            raise RuntimeError("the lease is closed")
