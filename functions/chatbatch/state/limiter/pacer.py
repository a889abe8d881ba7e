"""The last step before a send: one process's sends no denser than the limiter spaced
them, however late they wake.

The limiter books every send a time, spaced at the limit's rate over all workers
(``Grant.starts``, ``Grant.spacing_s``). A worker sleeps until its job's time; a process
whose event loop was busy (a stall of the CPU, the GIL) wakes several of them late and
together, and a provider that enforces its limit over short periods refuses such a bunch
even though the minute has room. So as each request is about to be written on its ready
connection, the worker ``take``s it here: it may leave while the process's sends of the
last ``burst_s`` (a model's config, default 1 s) are fewer than the burst's share of the
spacing and none left in the last half interval; else it waits and asks again. Sends on
their spaced times are not held where the share covers the period (600/min with a 1 s
burst; at e.g. 603/min it does not: issue 14, open); late ones leave spread and catch
up at up to twice the rate. A send counts from when it was ``written`` (the provider
counts it when it arrives, and the way from here to the socket may be slow too).

One ``Pacer`` per process (``PACER``): a Lambda instance is one process, whose own sends
the limiter already spaced; the local runtime's emulated instances share one process, its
CPU and its stalls, and so this one pacer. Thread-safe (each emulated instance runs its
own event loop on its own thread).
"""

from __future__ import annotations

import math
import threading
from collections import defaultdict

GAP = 0.5  # a late send may follow the one before it at half the spacing (to catch up)
EDGE = 0.005  # the burst period counted this much longer (the way from a write varies);
# the spacing's own margin (``policy.PACE_MARGIN``) is larger, so the period's share
# never passes the provider's share of the burst
TICK_S = 1e-6  # times this close are one (a wait's end computed in floats)


class Send:
    """A send the pacer let go: when it left, moved to when it was written."""

    __slots__ = ("at",)

    def __init__(self, at: float) -> None:
        self.at = at


class Pacer:
    def __init__(self) -> None:
        self._sent: dict[tuple[str, int], list[Send]] = defaultdict(list)  # the last burst
        self._last: dict[tuple[str, int], Send] = {}
        self._lock = threading.Lock()

    def wait_s(self, model: str, shard: int, spacing_s: float, burst_s: float, now: float) -> float:
        """Seconds until a send of ``model`` on ``shard`` may leave (0: now); takes nothing."""
        with self._lock:
            return max(0.0, self._free_at((model, shard), spacing_s, burst_s, now) - now)

    def take(
        self, model: str, shard: int, spacing_s: float, burst_s: float, now: float
    ) -> Send | float:
        """The ``Send`` if a send of ``model`` on ``shard`` may leave at ``now`` (it is
        counted from then; ``written`` moves it to when it was written), else the seconds
        until it may: ask again then (a wake-up may be late too).

        A send may leave while this process's sends of the last burst period (``burst_s``
        and ``EDGE`` of it more) are fewer than the period's share of the spacing (rounded
        up: never above the provider's share, as the spacing has a larger margin), and
        none left in the last half ``spacing_s``: sends on their spaced times are never
        held, late ones catch up at no more than twice the rate."""
        key = (model, shard)
        with self._lock:
            at = self._free_at(key, spacing_s, burst_s, now)
            if now < at - TICK_S:
                return at - now
            send = Send(now)
            if spacing_s > 0:  # not spaced: not counted
                self._sent[key].append(send)
                self._last[key] = send
            return send

    def _free_at(self, key: tuple[str, int], spacing_s: float, burst_s: float, now: float) -> float:
        if spacing_s <= 0:
            return now
        period = burst_s * (1 + EDGE)
        share = max(1, math.ceil(period / spacing_s - 1e-9))
        sent = self._sent[key] = [s for s in self._sent[key] if s.at > now - period + TICK_S]
        times = sorted(s.at for s in sent)
        at = times[-share] + period if len(times) >= share else now
        if (last := self._last.get(key)) is not None:
            at = max(at, last.at + GAP * spacing_s)
        return at

    def written(self, model: str, shard: int, send: Send, now: float) -> None:
        """``send`` was written at ``now``: it counts from then (the way from the pacer
        to the socket may have been slow, and the provider counts it when it arrives)."""
        with self._lock:
            send.at = max(send.at, now)
            last = self._last.get((model, shard))
            if last is None or send.at > last.at:
                self._last[(model, shard)] = send


PACER = Pacer()
