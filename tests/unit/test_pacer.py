"""The pacer (``state/limiter/pacer.py``): the last step before a send holds the sends a
busy process woke late and together, and never the ones on their spaced times.

Each send is a caller that wakes at some time and asks ``Pacer.delay`` again after every
wait it is told, as ``pipeline.send_at`` does; the callers run in time order on a simulated
clock."""

from __future__ import annotations

import heapq
import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatbatch.state.limiter.pacer import EDGE, GAP, TICK_S, Pacer, Send
from chatbatch.state.limiter.policy import PACE_MARGIN

MODEL = "m"


def sends(
    wakes: list[float], spacing_s: float, burst_s: float = 1.0, way_s: float = 0.0
) -> list[float]:
    """When each send is written, its callers woken at ``wakes``, in that order; each
    takes ``way_s`` from the pacer to its socket."""
    pacer, left = Pacer(), []
    queue = [(t, i, None) for i, t in enumerate(wakes)]
    heapq.heapify(queue)
    while queue:
        now, i, send = heapq.heappop(queue)
        if send is not None:  # written
            pacer.written(MODEL, 0, send, now)
            left.append(now)
            continue
        got = pacer.take(MODEL, 0, spacing_s, burst_s, now)
        if isinstance(got, Send):
            heapq.heappush(queue, (now + way_s, i, got))
        else:
            assert got > 0
            heapq.heappush(queue, (now + got, i, None))
    return left


def most_in(times: list[float], span_s: float) -> int:
    """The most of ``times`` in any half-open window (t - span_s, t]."""
    ordered = sorted(times)
    return max((sum(1 for u in ordered if t - span_s < u <= t) for t in ordered), default=0)


def test_sends_on_their_spaced_times_are_never_held() -> None:
    spacing = 60 / (PACE_MARGIN * 600)  # the limiter's spacing at 600/min
    wakes = [i * spacing for i in range(200)]
    assert sends(wakes, spacing) == wakes


def test_sends_woken_together_leave_at_the_burst_share_and_catch_up() -> None:
    """A stall of 2 s wakes 20 sends at once: 10 per second leave (600/min enforced per
    second), half a spacing apart, and then the sends on time go on time again."""
    spacing = 60 / (PACE_MARGIN * 600)
    stalled = [2.0] * 20
    on_time = [2.0 + 3 + i * spacing for i in range(30)]
    left = sends(stalled + on_time, spacing)
    assert len(left) == 50
    assert most_in(left, 1.0) == 10
    assert min(b - a for a, b in itertools.pairwise(left)) >= GAP * spacing - 2 * TICK_S
    assert left[:20][-1] - 2.0 < 2.1  # 20 late sends in about two seconds
    assert left[20:] == on_time  # caught up: the later sends were not held


def test_an_idle_pacer_sends_at_once() -> None:
    assert isinstance(Pacer().take(MODEL, 0, 0.1, 1.0, 5.0), Send)
    pacer = Pacer()
    for _ in range(3):  # no spacing: never held
        assert isinstance(pacer.take(MODEL, 0, 0.0, 1.0, 5.0), Send)


def test_models_and_shards_are_paced_apart() -> None:
    pacer = Pacer()
    assert isinstance(pacer.take("a", 0, 1.0, 1.0, 0.0), Send)
    assert isinstance(pacer.take("a", 1, 1.0, 1.0, 0.0), Send)
    assert isinstance(pacer.take("b", 0, 1.0, 1.0, 0.0), Send)
    assert pacer.take("a", 0, 1.0, 1.0, 0.0) == pytest.approx(GAP)  # half a spacing after


def test_a_send_counts_from_when_it_was_written() -> None:
    """A send whose way to the socket took 30 ms: the send a burst later waits for it,
    so the provider never sees two of them in one second (60/min enforced per second)."""
    pacer, spacing = Pacer(), 60 / (PACE_MARGIN * 60)
    first = pacer.take(MODEL, 0, spacing, 1.0, 0.0)
    assert isinstance(first, Send)
    pacer.written(MODEL, 0, first, 0.03)
    assert pacer.take(MODEL, 0, spacing, 1.0, spacing) == pytest.approx(0.03 + 1 + EDGE - spacing)


@settings(max_examples=200, deadline=None)
@given(
    wakes=st.lists(st.floats(0, 20, allow_nan=False), min_size=1, max_size=120),
    rpm=st.integers(1, 3000),
    burst_s=st.sampled_from([0.5, 1.0, 2.0, 10.0]),
    fb=st.floats(0.8, 1.0),
    way_s=st.sampled_from([0.0, 0.003, 0.05]),
)
def test_no_burst_period_sees_more_than_its_share(
    wakes: list[float], rpm: int, burst_s: float, fb: float, way_s: float
) -> None:
    """Any wake-ups: every send is written, none before it woke, no two closer than half
    the spacing, and no burst period holds more than its share of the limit (rounded
    up), counted when they were written."""
    spacing = 60 / (PACE_MARGIN * rpm * fb)
    left = sorted(sends(wakes, spacing, burst_s, way_s))
    assert len(left) == len(wakes)
    assert min(left) >= min(wakes)
    assert all(b - a >= GAP * spacing - 2 * TICK_S for a, b in itertools.pairwise(left))
    period = burst_s * (1 + EDGE)
    share = max(1, math.ceil(period / spacing - 1e-9))
    assert most_in(left, period - 2 * TICK_S) <= share
    assert share <= max(1, math.ceil(rpm * burst_s / 60))  # never above the provider's own


@settings(max_examples=300, deadline=None)
@given(
    rpm=st.integers(1, 60_000),
    burst_s=st.sampled_from([0.1, 0.5, 1.0, 2.0, 10.0]),
    fb=st.floats(0.8, 1.0),
)
def test_sends_on_their_spaced_times_are_never_held_at_any_rate(
    rpm: int, burst_s: float, fb: float
) -> None:
    """At any limit, burst and burst factor, sends woken on the limiter's spacing leave
    as they woke (a pacer that held them would fall further behind with every burst)."""
    spacing = 60 / (PACE_MARGIN * rpm * fb)
    wakes = [i * spacing for i in range(min(400, 30 + int(3 * burst_s / spacing)))]
    assert sends(wakes, spacing, burst_s) == wakes
