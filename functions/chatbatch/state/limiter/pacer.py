"""The last step before a send: one process's sends leave no closer together than the
limiter spaced them.

The limiter books every send a time, spaced at the limit's rate over all workers
(``Grant.starts``, ``Grant.spacing_s``). A worker sleeps until its job's time; a process
whose event loop was busy (a stall of the CPU, the GIL) wakes several of them late and
together, and a provider that enforces its limit over short periods refuses such a bunch
even though the minute has room. So at wake-up each send also waits for the process's
previous send on the shard to be ``spacing_s`` behind it: a late send keeps the spacing
and the ones after it follow at the limit's rate, so the lateness one stall causes is
carried, never added up (each send is late by at most the largest stall since the sends
last had room to catch up), and no second or minute sees more than the spacing allows.

One ``Pacer`` per process (``PACER``): a Lambda instance is one process, whose own sends
the limiter already spaced; the local runtime's emulated instances share one process, its
CPU and its stalls, and so this one pacer. Thread-safe (each emulated instance runs its
own event loop on its own thread).
"""

from __future__ import annotations

import math
import threading
from collections import defaultdict, deque

GAP = 0.5  # a late send may follow the one before it at half the spacing (to catch up)
EDGE_S = 0.01  # the burst period counted a little longer: a send's way there varies
TICK_S = 1e-6  # times this close are one (a wait's end computed in floats)


class Pacer:
    def __init__(self) -> None:
        self._sent: dict[tuple[str, int], deque[float]] = defaultdict(deque)  # last burst
        self._last: dict[tuple[str, int], float] = {}
        self._lock = threading.Lock()

    def delay(self, model: str, shard: int, spacing_s: float, burst_s: float, now: float) -> float:
        """0 if a send of ``model`` on ``shard`` may leave at ``now`` (it is counted as sent
        then), else the seconds until it may: ask again then (a wake-up may be late too).

        A send may leave while this process sent fewer than the burst's share of the limit
        (``burst_s ÷ spacing_s`` rounded up, as a provider rounds its share of a second)
        in the last ``burst_s`` and none in the last half ``spacing_s``: sends on their
        spaced times are never held, late ones catch up at no more than twice the rate."""
        if spacing_s <= 0:
            return 0.0
        period = burst_s + EDGE_S
        share = max(1, math.ceil(burst_s / spacing_s - 1e-9))
        with self._lock:
            key = (model, shard)
            sent = self._sent[key]
            while sent and sent[0] <= now - period + TICK_S:
                sent.popleft()
            at = sent[-share] + period if len(sent) >= share else 0.0
            if key in self._last:
                at = max(at, self._last[key] + GAP * spacing_s)
            if now < at - TICK_S:
                return at - now
            sent.append(now)
            self._last[key] = now
            return 0.0


PACER = Pacer()
