"""The shared rate limiter's spacing and priorities, many threads on a shared simulated
clock (``limiter_sim``): sends spread at the limit's rate, a critical job ahead of a low
backlog, shares lent the moment a priority has no demand, shares under contention.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import pytest
from limiter_sim import (
    MODEL,
    START,
    Book,
    Hammer,
    SimClock,
    in_range,
    limiters,
    per_minute,
    send_jobs,
    windows,
    with_model,
)

from chatbatch.core.config import Config, Priority
from chatbatch.state.limiter.limiter import RateLimiter
from chatbatch.state.limiter.policy import US, Limits, Policy, State, slot_of

if TYPE_CHECKING:
    from conftest import Dynamo


def test_capacity_is_spread_over_the_minute(dynamo: Dynamo, config: Config) -> None:
    """No burst: at saturation each second grants about a 60th of the minute."""
    config = with_model(config, 600, 10_000_000)
    clock, book = SimClock(), Book()
    hammer = Hammer(clock, book, (100, 100), end=START + 20, latency_s=0.5)
    instances = limiters(dynamo, config, clock, 4)
    clock.run([hammer.worker(instances[i % 4], Priority.normal, 5, i) for i in range(16)])
    per_second = [in_range(book.all("r"), s, s + 1) for s in range(20)]
    assert max(windows(book.all("r"), width=1.0)) <= 10  # any second: 600 / 60, spaced
    assert sum(per_second) >= 0.95 * 600 / 3
    sends = sorted(t for t, n in book.all("r") if n)  # 4 instances, 16 threads, one spacing
    assert min(b - a for a, b in itertools.pairwise(sends)) >= 0.1 - 1e-6


def saturate(
    hammer: Hammer, instances: Sequence[RateLimiter], priority: Priority, n: int
) -> list[Callable[[], None]]:
    return [hammer.worker(instances[i % len(instances)], priority, 2, seed=i) for i in range(n)]


def asker(
    clock: SimClock, limiter: RateLimiter, priority: Priority, at: float, asks: list[float]
) -> Callable[[], None]:
    """One job of ``priority`` arriving at ``at``: asks until granted; ``asks`` gets the
    arrival and the time its request is sent."""

    def run() -> None:
        clock.sleep(at - clock())
        asks.append(clock())
        while not (lease := limiter.acquire(MODEL, priority, 100)):
            clock.sleep(lease.wait_s)
        asks.append(lease.send_at(0))
        limiter.reconcile(lease, 100)

    return run


def test_a_critical_job_goes_ahead_of_a_low_backlog_within_a_second_or_two(
    dynamo: Dynamo, config: Config
) -> None:
    config = with_model(config, 120, 10_000_000)
    clock, book = SimClock(), Book()
    hammer = Hammer(clock, book, (100, 100), end=START + 80)
    instances = limiters(dynamo, config, clock, 4)
    asks: list[float] = []
    critical = asker(clock, instances[0], Priority.critical, START + 70, asks)
    clock.run([*saturate(hammer, instances, Priority.low, 8), critical])
    arrived, sent = asks
    assert sent - arrived <= 2.0  # low saturates the limit (2/s); critical waits its turn


def instance(
    clock: SimClock, limiter: RateLimiter, priority: Priority, book: Book, end: float
) -> Callable[[], None]:
    """A worker instance with a backlog: an invocation of ten jobs after another (each
    ends one 0.3 s answer after its last send) until ``end``."""

    def run() -> None:
        while clock() < end:
            last = send_jobs(clock, limiter, priority, 10, book)
            clock.sleep(last + 0.3 - clock())

    return run


def critical_burst(
    dynamo: Dynamo, config: Config, priority: Priority, loaded: bool, start: float = START
) -> float:
    """p95 seconds from arrival to send of 100 jobs of ``priority`` (ten instances with ten
    jobs each) that arrive once ten low instances have filled the minute (or on an idle
    limit), all twenty instances on one limit of 600/min. ``start``: a run on a table that
    served another starts after that one's window."""
    config = with_model(config, 600, 100_000_000)
    clock, book, backlog_book = SimClock(start), Book(), Book()
    instances = limiters(dynamo, config, clock, 20)
    arrival = start + 61
    burst = [
        instance(clock, limiter, priority, book, arrival + 0.1)  # one invocation each
        for limiter in instances[:10]
    ]
    backlog = [
        instance(clock, limiter, Priority.low, backlog_book, arrival + 15)
        for limiter in instances[10:]
    ]

    def arriving(run: Callable[[], None]) -> Callable[[], None]:
        return lambda: (clock.sleep(arrival - clock()), run())[1]

    clock.run([*map(arriving, burst), *(backlog if loaded else [])])
    waits = sorted(t - arrival for t, _ in book.requests[priority])
    assert len(waits) == 100
    return waits[94]


def test_critical_jobs_overtake_a_low_backlog_as_if_the_limit_were_idle(
    dynamo: Dynamo, config: Config
) -> None:
    """The issue's setting on the limiter alone (20 instances, no process to saturate): 100
    critical jobs behind a low backlog reach the provider about as fast as on an idle limit
    (measured: p95 10.5 s vs 9.5 s; the issue's target is 1.5x). The same burst at low
    priority, competing as an equal, takes 24.1 s: the check can fail."""
    idle = critical_burst(dynamo, config, Priority.critical, loaded=False)
    assert idle <= 10.0  # 100 sends at 10/s
    loaded = critical_burst(dynamo, config, Priority.critical, loaded=True, start=START + 600)
    assert loaded <= 1.5 * idle


def test_a_priority_without_demand_lends_its_share_at_once(dynamo: Dynamo, config: Config) -> None:
    """Critical is denied once and leaves: low is back at the full rate within seconds."""
    config = with_model(config, 120, 10_000_000)
    clock, book = SimClock(), Book()
    hammer = Hammer(clock, book, (100, 100), end=START + 100)
    instances = limiters(dynamo, config, clock, 4)

    def denied_once() -> None:
        clock.sleep(70)
        for _ in range(10):  # asks (and sends) until it is denied: marked starving, leaves
            lease = instances[0].acquire(MODEL, Priority.critical, 100)
            if not lease:
                break
            instances[0].reconcile(lease, 100)
        assert not lease, "low fills the limit: critical must run into it"

    clock.run([*saturate(hammer, instances, Priority.low, 8), denied_once])
    assert in_range(book.requests[Priority.low], 74, 94) >= 0.9 * 2 * 20  # 2/s, all low


def test_a_served_priority_holds_nothing_back(dynamo: Dynamo, config: Config) -> None:
    """Two critical jobs every 3 s while low has a backlog at 600/min: each critical ask
    meets low's booked sends (a pace denial marks it starving), is served one interval
    later, and its mark goes with that grant: low keeps the limit full."""
    config = with_model(config, 600, 100_000_000)
    clock, book = SimClock(), Book()
    hammer = Hammer(clock, book, (100, 100), end=START + 60, latency_s=0.5)
    instances = limiters(dynamo, config, clock, 4)

    def trickle() -> None:
        clock.sleep(20)
        while clock() < START + 55:
            arrived = clock()
            send_jobs(clock, instances[0], Priority.critical, 2, book)
            clock.sleep(arrived + 3.0 - clock())

    clock.run([*saturate(hammer, instances, Priority.low, 16), trickle])
    assert in_range(book.requests[Priority.critical], 25, 55) >= 18  # both, every 3 s
    assert sum(in_range(book.requests[p], 25, 55) for p in Priority) >= 0.95 * 300


def test_a_priority_stays_starving_while_its_job_waits(dynamo: Dynamo, config: Config) -> None:
    """A critical job told to wait many seconds for the window (tokens bind) keeps its
    mark through the wait: low, borrowing, takes none of what it waits for."""
    config = with_model(config, 10_000, 60_000)
    clock, book = SimClock(), Book()
    hammer = Hammer(clock, book, (1_000, 3_000), end=START + 150, latency_s=4.0, usage=(1, 1))
    instances = limiters(dynamo, config, clock, 4)
    asks: list[float] = []
    waits: list[float] = []

    def staggered(i: int) -> Callable[[], None]:
        run = hammer.worker(instances[i % 4], Priority.low, 1, seed=i)

        def go() -> None:
            clock.sleep(i * 0.7)  # low's grants spread over the minute
            run()

        return go

    def critical() -> None:
        clock.sleep(100)
        asks.append(clock())
        while not (lease := instances[0].acquire(MODEL, Priority.critical, 12_000)):
            waits.append(lease.wait_s)
            clock.sleep(lease.wait_s)
        asks.append(lease.send_at(0))
        instances[0].reconcile(lease, 12_000)

    clock.run([*(staggered(i) for i in range(6)), critical])
    arrived, sent = asks
    assert max(waits) > 2.0  # it did wait past a mark's bare 2 s
    low_sends = [t for t, n in book.requests[Priority.low] if n and arrived < t < sent]
    assert low_sends == []


def test_a_batch_that_would_cross_its_floor_borrows() -> None:
    """High, one request below its floor while critical starves below its own, asks for
    two: the first is its own share (booked ahead as usual), both together would take it
    past its floor, so they borrow and are held back (no booking ahead of critical). A
    batch of two used to overshoot the floor by one each minute, out of critical's share."""
    policy = Policy([0.4, 0.3, 0.2, 0.1])
    st = State(START, slot_of(START), Limits({"r": 120.0, "t": 1e7}, 1.0, None, 1.0))
    st.prio[0]["r"], st.prio[1]["r"] = 40.0, 35.0  # floors 48 and 36
    st.marks[0] = START + 5.0  # critical starving
    st.next_send_us = round((START + 0.2) * US)  # a send booked ahead: two fit the horizon
    assert policy.check(st, 1, {"r": 1, "t": 100}).bounds is not None
    two = policy.check(st, 1, {"r": 2, "t": 200})
    assert (two.bounds, two.reason) == (None, "priority")
    st.prio[1]["r"] = 34.0  # both below the floor: its own, booked ahead
    assert policy.check(st, 1, {"r": 2, "t": 200}).bounds is not None


# --- priorities ----------------------------------------------------------------------


@pytest.mark.slow
def test_all_priorities_saturating_get_their_shares(dynamo: Dynamo, config: Config) -> None:
    """Each priority gets its share of the limit. Critical takes what the others leave,
    so the limit's unused part (the paced slots of the 3% of grants the harness releases
    unsent, the pace margin: a minute sends 114-118 of 120) falls on it, not on the lower
    priorities at their floors: its shortfall from its floor is at most that and about
    one request per lower priority (their usage is estimated on 10 s slots, and a served
    critical grant lifts the starving mark others still wait under). An absolute 0.95 x
    48 failed 1 run in 5 under load at 44.75 of a 117.5-request minute (high 37.4); the
    batch crossing its floor borrowing (``within_floor``) made it 1 in 24. Per minute,
    critical's share is of what went out that minute."""
    config = with_model(config, 120, 10_000_000)
    clock, book = SimClock(), Book()
    hammer = Hammer(clock, book, (100, 100), end=START + 130)
    instances = limiters(dynamo, config, clock, 4)
    workers = [
        hammer.worker(instances[i % 4], priority, batch=1 + i % 2, seed=i)
        for i, priority in enumerate(list(Priority) * 8)
    ]
    clock.run(workers)

    got = per_minute(book)
    floor = {p: config.priorities[p].share * 120 for p in Priority}  # 48, 36, 24, 12
    assert max(windows(book.all("r"))) <= 120
    unused = 120 - sum(got.values())
    assert floor[Priority.critical] - got[Priority.critical] <= unused + 3 * 60 / 122, got
    assert got[Priority.high] <= floor[Priority.high] + 3 * 60 / 122, got  # high: at its floor
    assert got[Priority.low] > 0, got
    assert got[Priority.critical] >= got[Priority.high] >= got[Priority.normal] >= got[Priority.low]
    assert sum(got.values()) >= 0.95 * 120, got
    for start in range(0, 71, 10):  # and its share of what went out in every minute
        sent = {p: in_range(book.requests[p], start, start + 60) for p in Priority}
        share = config.priorities[Priority.critical].share
        assert sent[Priority.critical] >= 0.9 * share * sum(sent.values()), (start, sent)


@pytest.mark.slow
def test_surplus_goes_to_the_higher_priority(dynamo: Dynamo, config: Config) -> None:
    """Critical and low both saturate: low keeps its share, critical takes the rest."""
    config = with_model(config, 120, 10_000_000)
    clock, book = SimClock(), Book()
    hammer = Hammer(clock, book, (100, 100), end=START + 130)
    instances = limiters(dynamo, config, clock, 4)
    pairs = [(Priority.critical, i) for i in range(8)] + [(Priority.low, i) for i in range(8, 16)]
    clock.run([hammer.worker(instances[i % 4], p, 1, i) for p, i in pairs])

    got = per_minute(book)
    assert got[Priority.low] >= 0.9 * config.priorities[Priority.low].share * 120, got
    assert got[Priority.critical] >= 0.8 * 120, got


def test_with_slack_everybody_runs_undelayed(dynamo: Dynamo, config: Config) -> None:
    config = with_model(config, 120, 10_000_000)
    clock, book = SimClock(), Book()
    instances = limiters(dynamo, config, clock, 4)

    def steady(limiter: RateLimiter, priority: Priority) -> Callable[[], None]:
        def run() -> None:
            clock.sleep(priority.rank)  # arrivals spread over the seconds
            while clock() < START + 90:  # 4 x 15 = 60 requests a minute, half the limit
                lease = limiter.acquire(MODEL, priority, 100)
                if not lease:
                    book.denials += 1
                book.add(priority, clock(), lease.granted, 0)
                limiter.reconcile(lease, 100)
                clock.sleep(4.0)

        return run

    clock.run([steady(instances[p.rank], p) for p in Priority])
    assert book.denials == 0
    assert all(in_range(book.requests[p], 0, 90) >= 22 for p in Priority)
