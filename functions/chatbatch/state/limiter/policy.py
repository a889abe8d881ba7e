"""What one limiter shard allows now: pure arithmetic on its decoded state, no AWS.

The window of one-second slots, the spacing of sends, the priority
floors and holds, and the adaptive factor after 429s (the design note in
``chatbatch.state.limiter`` says why each rule).
``State`` is a shard as seen at one instant (``item.decode`` makes it from the item);
``Policy.check`` turns it into bounds for the conditional write, or a wait and its reason.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

SLOT_S = 1.0  # one slot of the sliding window
WINDOW_S = 60.0  # the limits are per minute
WINDOW_SLOTS = round(WINDOW_S / SLOT_S)  # closed slots in the window besides the current one
HORIZON_S = 1.0  # a grant's sends are booked at most this far ahead of now
REFILL_AT = 0.5  # a pace denial asks again once this part of the horizon's sends fit
PRIO_SLOT_S = 10.0  # per-priority usage is kept in coarser slots
PRIO_SLOTS = 7  # the current one and 6 before: 60-70 s, never less than the window
STARVING_S = 2.0  # a denied priority is starving until its wait is over and this long after
# A starving mark is extended only by at least this much: it lasts 2 s past its jobs'
# next ask, so it still covers the ask, and a priority's denials write it once a second.
MARK_EVERY_S = 1.0
AIMD_DECREASE = 0.5  # a 429 halves the limit ...
AIMD_DECREASE_KNOWN = 0.9  # ... or takes 10 % off when the provider told us its limit,
AIMD_ESCALATE_S = 30.0  # unless 429s keep coming: a 429 this soon after a decrease halves
AIMD_COOLDOWN_S = 5.0  # ... at most once in this long
AIMD_STEP = 0.05  # then it grows back by 5 % of the limit ...
AIMD_STEP_EVERY_S = 10.0  # ... every 10 s
AIMD_FLOOR = 0.05
# Sends are spaced at a little under the limit's rate: a send that leaves a few ms late
# (a busy worker, the network) would otherwise be the 11th of a rolling second at 600/min.
PACE_MARGIN = 0.995
# A 429 refused by a shorter period (the minute still had room) slows the sends only:
BURST_DECREASE = 0.9  # the spacing's rate loses a tenth ...
BURST_COOLDOWN_S = 2.0  # ... at most once in this long
BURST_STEP = 0.02  # then it grows back by 2 % ...
BURST_STEP_EVERY_S = 1.0  # ... every second (429s that keep coming hold it down)
BURST_FLOOR = 0.8  # such a 429 may be a fault, or another user of the key, too
MIN_WAIT_S = 0.01
RECHECK_S = 1.0  # how soon to ask again when open leases' give-backs may free the tokens
METRICS = ("r", "t")  # requests, tokens
US = 1_000_000  # send times are kept in microseconds


def slot_of(now: float) -> int:
    return math.floor(now / SLOT_S)


def cslot_of(slot: int) -> int:
    return math.floor(slot * SLOT_S / PRIO_SLOT_S)


@dataclass(frozen=True)
class Limits:
    """A shard's limits: configured (and learned) base, and effective after the factor."""

    base: dict[str, float]
    factor: float
    factor_at: float | None  # time of the last decrease
    factor_base: float  # the factor right after that decrease
    burst: float = 1.0  # the spacing's own factor, after 429s of a shorter period
    burst_at: float | None = None  # time of its last decrease

    def eff(self, metric: str) -> float:
        return self.base[metric] * self.factor

    def fits(self, tokens: int, *, adapted: bool) -> bool:
        """Whether one request of ``tokens`` fits a minute of the limit: the configured
        (and learned) one, or with ``adapted`` the effective one after the factor."""
        factor = self.factor if adapted else 1.0
        return tokens <= self.base["t"] * factor and self.base["r"] * factor >= 1

    def pace(self) -> float:
        """Requests per minute the sends are spaced at: the limit less its margin, slowed
        by ``burst``."""
        return self.eff("r") * PACE_MARGIN * self.burst

    def recovery_wait(self, needed_factor: float, now: float) -> float:
        """Seconds until the factor has grown back to ``needed_factor``."""
        if self.factor_at is None or needed_factor > 1:
            return WINDOW_S
        steps = math.ceil((needed_factor - self.factor_base) / AIMD_STEP - 1e-9)
        return max(self.factor_at + steps * AIMD_STEP_EVERY_S - now, MIN_WAIT_S)


def interval_s(limit: float) -> float:
    """Seconds between two sends at ``limit`` requests per minute."""
    return WINDOW_S / limit


def step_us(limits: Limits) -> int:
    """Microseconds between two sends of a shard, as its ``nx`` is booked (rounded up)."""
    return math.ceil(interval_s(limits.pace()) * US)


def factor(
    f0: float | None,
    at: float | None,
    now: float,
    step: float = AIMD_STEP,
    every_s: float = AIMD_STEP_EVERY_S,
) -> float:
    """An adaptive factor now: ``f0`` after the decrease at ``at``, grown back since by
    ``step`` every ``every_s``."""
    if f0 is None or at is None:
        return 1.0
    steps = math.floor(max(0.0, now - at) / every_s)
    return min(1.0, f0 + step * steps)


@dataclass
class State:
    """A shard item as seen at ``now``: window usage, per-priority usage, marks, limits."""

    now: float
    slot: int
    limits: Limits
    window: dict[str, dict[int, int]] = field(default_factory=lambda: {m: {} for m in METRICS})
    prio: dict[int, dict[str, float]] = field(
        default_factory=lambda: defaultdict(lambda: dict.fromkeys(METRICS, 0.0))
    )
    outstanding: dict[str, int] = field(default_factory=lambda: dict.fromkeys(METRICS, 0))
    marks: dict[int, float] = field(default_factory=dict)
    wants: dict[int, int] = field(default_factory=dict)
    learned: dict[str, float | None] = field(default_factory=dict)
    expired: list[str] = field(default_factory=list)
    prev: dict[str, int | None] = field(default_factory=dict)  # the pinned previous slot
    next_send_us: int | None = None  # when the next send may start (epoch microseconds)
    spare: int = 0  # send times this instance holds unused (``spares``): they need no spacing

    @property
    def cslot(self) -> int:
        return cslot_of(self.slot)

    def prio_weight(self, cslot: int) -> float:
        """How much of a 10 s slot lies in the last minute (the oldest one only partly)."""
        start = cslot * PRIO_SLOT_S
        inside = start + PRIO_SLOT_S - (self.now - WINDOW_S)
        return min(1.0, max(0.0, inside / PRIO_SLOT_S))

    def cur(self, metric: str) -> int:
        return self.window[metric].get(self.slot, 0)

    def closed(self, metric: str) -> int:
        return sum(v for s, v in self.window[metric].items() if s != self.slot)

    def used(self, metric: str) -> int:
        return sum(self.window[metric].values())

    def spaced(self, n: int) -> int:
        """How many of ``n`` sends need a new spaced time (the first take the spares)."""
        return max(0, n - self.spare)

    def starving(self, rank: int) -> bool:
        """The priority has jobs waiting: its mark (``starving_until``) has not passed."""
        return self.now < self.marks.get(rank, -math.inf)

    def starving_until(self, wait_s: float) -> float:
        """How long a priority denied with ``wait_s`` stays starving: its jobs ask again
        then (a hand-back's copy as well), and a little longer."""
        return self.now + min(wait_s, WINDOW_S) + STARVING_S

    def mark_stale(self, rank: int, until: float) -> bool:
        return self.marks.get(rank, -math.inf) < until - MARK_EVERY_S

    def factor_after_429(self) -> float | None:
        """The factor a 429 now leaves (None: a decrease happened within the cooldown)."""
        last = self.limits.factor_at
        if last is not None and self.now - last < AIMD_COOLDOWN_S:
            return None
        # With the real limit learned from headers, a lone 429 means our window and
        # the provider's disagree at the edge (clock skew, a retry), not a wrong limit;
        # 429s that keep coming (another user of the key, the other metric) halve it.
        known = any(v is not None for v in self.learned.values())
        lone = last is None or self.now - last >= AIMD_ESCALATE_S
        decrease = AIMD_DECREASE_KNOWN if known and lone else AIMD_DECREASE
        return max(AIMD_FLOOR, self.limits.factor * decrease)

    def burst_after_429(self) -> float | None:
        """The spacing's factor a 429 of a shorter period leaves (None: within cooldown)."""
        last = self.limits.burst_at
        if last is not None and self.now - last < BURST_COOLDOWN_S:
            return None
        return max(BURST_FLOOR, self.limits.burst * BURST_DECREASE)


# --- the decision ------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """Either bounds for the conditional write, or a wait and its reason."""

    bounds: dict[str, int] | None
    wait_s: float = 0.0
    reason: str | None = None
    horizon_s: float = HORIZON_S  # how far ahead the grant's first send may be booked


class Policy:
    """Window, pace, priority holds and the adaptive factor: what one shard allows now."""

    def __init__(self, shares: Sequence[float]) -> None:
        self.shares = shares

    def floor(self, st: State, rank: int, metric: str) -> float:
        return self.shares[rank] * st.limits.eff(metric)

    def below_floor(self, st: State, rank: int) -> bool:
        return all(st.prio[rank][m] < self.floor(st, rank, m) for m in METRICS)

    def within_floor(self, st: State, rank: int, requests: int) -> bool:
        """A grant of ``requests`` is the priority's own share: it is below its floor, and
        so is each of the grant's requests (a batch that would cross the floor borrows;
        the shorter prefix that stays below is granted as the priority's own)."""
        return self.below_floor(st, rank) and (
            st.prio[rank]["r"] + requests - 1 < self.floor(st, rank, "r")
        )

    def hold(self, st: State, rank: int, metric: str, borrowing: bool) -> int:
        """What a priority leaves for others: the unused floors of starving priorities.

        A priority below its floor leaves them to the starving priorities above it; a
        borrower (at or above its floor) to all of them. A held floor is at least the
        request its priority waits with, so a request bigger than a floor finds room.
        The highest starving priority below its floor is never held back: no deadlock.
        """
        held = 0.0
        for q in range(len(self.shares) if borrowing else rank):
            if q != rank and st.starving(q) and self.below_floor(st, q):
                want = 1 if metric == "r" else st.wants.get(q, 0)
                held += max(self.floor(st, q, metric) - st.prio[q][metric], want)
        return math.ceil(held)

    def check(self, st: State, rank: int, need: dict[str, int]) -> Verdict:
        """The limit, the spacing of sends and the holds.

        A borrower while a higher priority starves (it has jobs waiting for their share)
        is held back: it may send only now (no booking ahead of the starving one, whose
        next ask gets the next interval), and only while the window keeps the next second
        of sends free besides the floors held. So it uses capacity nobody else would, and
        the surplus goes to the higher priority.
        """
        borrowing = not self.within_floor(st, rank, need["r"])
        held_back = borrowing and any(st.starving(q) for q in range(rank))
        horizon = 0.0 if held_back else HORIZON_S
        bounds: dict[str, int] = {}
        waits: list[tuple[float, str]] = []
        for m in METRICS:
            hold = self.hold(st, rank, m, borrowing)  # on the window only
            if held_back and m == "r":
                hold += math.ceil(st.limits.eff(m) * HORIZON_S / WINDOW_S)
            bound, denied = self._metric(st, m, need[m], hold, horizon)
            if denied:
                waits.append(denied if not held_back else (denied[0], "priority"))
            bounds[m] = bound
        if waits:
            wait_s, reason = max(waits)
            return Verdict(None, max(wait_s, MIN_WAIT_S), reason)
        return Verdict(bounds, horizon_s=horizon)

    def _metric(
        self, st: State, m: str, n: int, hold: int, horizon: float
    ) -> tuple[int, tuple[float, str] | None]:
        limit = st.limits.eff(m)
        if n > limit:
            wait = st.limits.recovery_wait(n / st.limits.base[m], st.now)
            return -1, (wait, "adaptive")
        window_bound = math.floor(limit - st.closed(m) - hold - n)
        cur = st.cur(m)
        if cur > window_bound:
            missing = cur - window_bound
            wait = self._expiry_wait(st, m, missing)
            if hold or (m == "t" and st.outstanding[m] >= missing):
                wait = min(wait, RECHECK_S)  # the holders take their share, give-backs come
            return window_bound, (wait, "window")
        if m == "r":  # requests are spaced evenly (``spacing_wait``), not paced per slot
            if self.spacing_wait(st, n, horizon) <= 0:
                return window_bound, None
            # Ask again when half the horizon's sends fit, not when one more does: every
            # waiting worker wakes at that moment and one wins, so a wake that finds
            # several sends free turns one race into one grant of several jobs.
            refill = self.refill(st, horizon)
            return window_bound, (self.spacing_wait(st, max(n, refill), horizon), "pace")
        return window_bound, None

    @staticmethod
    def refill(st: State, horizon: float = HORIZON_S) -> int:
        """The sends a pace denial waits for: the ``REFILL_AT`` part of the horizon's."""
        return math.ceil(REFILL_AT * horizon * US / step_us(st.limits))

    @staticmethod
    def spacing_wait(st: State, n: int, horizon: float = HORIZON_S) -> float:
        """Seconds until ``n`` sends, spaced at the limit's rate, start within ``horizon``
        (0: now). So no short period ever sees more than its share of the minute."""
        spaced = st.spaced(n)
        if not spaced:
            return 0.0
        # in whole microseconds, exactly as the write's condition on ``nx`` is built
        # (``item.grant_update``): a worker that waits this long then fits, never loses
        # its write by a rounding at the edge of the horizon
        now_us = math.floor(st.now * US)
        first = max(now_us, st.next_send_us if st.next_send_us is not None else now_us)
        last = first + (spaced - 1) * step_us(st.limits)
        over = last - math.floor((st.now + horizon) * US)
        return (over + 1) / US if over > 0 else 0.0

    @staticmethod
    def _expiry_wait(st: State, m: str, amount: int) -> float:
        """Seconds until slots holding ``amount`` have left the window."""
        freed = 0
        for slot in sorted(st.window[m]):
            freed += st.window[m][slot]
            if freed >= amount:
                return (slot + WINDOW_SLOTS + 1) * SLOT_S - st.now
        return WINDOW_S
