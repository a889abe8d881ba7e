"""The pacer (``state/limiter/pacer.py``): the last step before a send holds the sends a
busy process woke late and together, and never the ones on their spaced times.

Each send is a caller that wakes at some time and asks ``Pacer.delay`` again after every
wait it is told, as ``pipeline.send_at`` does; the callers run in time order on a simulated
clock."""

from __future__ import annotations

import heapq
import itertools
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from chatbatch.state.limiter.pacer import EDGE_S, GAP, TICK_S, Pacer

MODEL = "m"


def sends(wakes: list[float], spacing_s: float, burst_s: float = 1.0) -> list[float]:
    """When each send leaves, its callers woken at ``wakes``, in the order they leave."""
    pacer, left = Pacer(), []
    queue = [(t, i) for i, t in enumerate(wakes)]
    heapq.heapify(queue)
    while queue:
        now, i = heapq.heappop(queue)
        wait = pacer.delay(MODEL, 0, spacing_s, burst_s, now)
        assert wait >= 0
        if wait:
            heapq.heappush(queue, (now + wait, i))
        else:
            left.append(now)
    return left


def most_in(times: list[float], span_s: float) -> int:
    """The most of ``times`` in any half-open window (t - span_s, t]."""
    ordered = sorted(times)
    return max((sum(1 for u in ordered if t - span_s < u <= t) for t in ordered), default=0)


def test_sends_on_their_spaced_times_are_never_held() -> None:
    spacing = 60 / (0.99 * 600)  # the limiter's spacing at 600/min
    wakes = [i * spacing for i in range(200)]
    assert sends(wakes, spacing) == wakes


def test_sends_woken_together_leave_at_the_burst_share_and_catch_up() -> None:
    """A stall of 2 s wakes 20 sends at once: 10 per second leave (600/min enforced per
    second), half a spacing apart, and then the sends on time go on time again."""
    spacing = 60 / (0.99 * 600)
    stalled = [2.0] * 20
    on_time = [2.0 + 3 + i * spacing for i in range(30)]
    left = sends(stalled + on_time, spacing)
    assert len(left) == 50
    assert most_in(left, 1.0) == 10
    assert min(b - a for a, b in itertools.pairwise(left)) >= GAP * spacing - 2 * TICK_S
    assert left[:20][-1] - 2.0 < 2.1  # 20 late sends in about two seconds
    assert left[20:] == on_time  # caught up: the later sends were not held


def test_an_idle_pacer_sends_at_once() -> None:
    assert Pacer().delay(MODEL, 0, 0.1, 1.0, 5.0) == 0
    assert Pacer().delay(MODEL, 0, 0.0, 1.0, 5.0) == 0  # no spacing: never held


def test_models_and_shards_are_paced_apart() -> None:
    pacer = Pacer()
    assert pacer.delay("a", 0, 1.0, 1.0, 0.0) == 0
    assert pacer.delay("a", 1, 1.0, 1.0, 0.0) == 0
    assert pacer.delay("b", 0, 1.0, 1.0, 0.0) == 0
    assert pacer.delay("a", 0, 1.0, 1.0, 0.0) > 0


@settings(max_examples=200, deadline=None)
@given(
    wakes=st.lists(st.floats(0, 20, allow_nan=False), min_size=1, max_size=120),
    rpm=st.integers(1, 3000),
    burst_s=st.sampled_from([0.5, 1.0, 2.0, 10.0]),
    fb=st.floats(0.8, 1.0),
)
def test_no_burst_period_sees_more_than_its_share(
    wakes: list[float], rpm: int, burst_s: float, fb: float
) -> None:
    """Any wake-ups: every send leaves, none before it woke, no two closer than half the
    spacing, and no burst period holds more than its share of the limit (rounded up)."""
    spacing = 60 / (0.99 * rpm * fb)
    left = sends(wakes, spacing, burst_s)
    assert len(left) == len(wakes)
    assert min(left) >= min(wakes)
    assert all(b - a >= GAP * spacing - 2 * TICK_S for a, b in itertools.pairwise(left))
    share = max(1, math.ceil(burst_s / spacing - 1e-9))
    assert most_in(left, burst_s + EDGE_S - 2 * TICK_S) <= share
    assert share <= max(1, math.ceil(rpm * burst_s / 60))  # never above the provider's own
