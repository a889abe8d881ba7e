"""The shared rate limiter against moto, many threads on a shared simulated clock
(``limiter_sim``): the limit holds and is filled, it adapts to 429s, the API.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
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
    windows,
    with_model,
)

from chatbatch.core.config import Config, Priority
from chatbatch.provider.retry import RateLimitInfo
from chatbatch.state.limiter.limiter import PACE_SPREAD_S, RateLimiter, RequestTooLargeError
from chatbatch.state.limiter.policy import PACE_MARGIN, WINDOW_S
from chatbatch.worker.capacity import Capacity, Slot

if TYPE_CHECKING:
    from conftest import Dynamo

# --- the limit holds and is filled ---------------------------------------------------


@dataclass(frozen=True)
class Load:
    rpm: int
    tpm: int
    sizes: tuple[int, int]  # estimated tokens per job
    usage: tuple[float, float]  # real tokens / estimate
    binding: str  # the limit demand runs into


@pytest.mark.slow
@pytest.mark.parametrize(
    "load",
    [
        Load(120, 100_000, (200, 600), (0.4, 1.0), "r"),
        # Open leases hold their estimates for the call's 2 s; with estimates near the
        # real usage the window fills, with worst cases far above it the open estimates
        # cost their share (see the design note).
        Load(1_000, 24_000, (300, 900), (0.9, 1.0), "t"),
    ],
    ids=["requests-bound", "tokens-bound"],
)
def test_32_threads_never_exceed_the_limit_and_fill_it(
    dynamo: Dynamo, config: Config, load: Load
) -> None:
    rpm, tpm, binding = load.rpm, load.tpm, load.binding
    config = with_model(config, rpm, tpm)
    clock, book = SimClock(), Book()
    hammer = Hammer(clock, book, load.sizes, end=START + 130, usage=load.usage)
    instances = limiters(dynamo, config, clock, 8)
    workers = [
        hammer.worker(instances[i % 8], Priority.normal, batch=1 + (i % 3) * 2, seed=i)
        for i in range(32)
    ]
    clock.run(workers)

    limit = {"r": rpm, "t": tpm}
    for metric in ("r", "t"):
        worst = max(windows(book.all(metric)))
        assert worst <= limit[metric], f"a 60 s window granted {worst} > {limit[metric]}"
    assert book.denials > 100  # demand exceeded the limit throughout
    for start in range(0, 71, 10):  # every full minute of the run
        granted = in_range(book.all(binding), start, start + 60)
        assert granted >= 0.95 * limit[binding], (start, granted)


# --- adaptive ------------------------------------------------------------------------


@dataclass
class Provider:
    """A provider enforcing its own sliding-minute request limit, with 429s."""

    limit: int
    send_headers: bool = False
    accepted: list[float] = field(default_factory=list)
    calls: list[tuple[float, bool]] = field(default_factory=list)  # (time, rate limited)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def call(self, now: float) -> bool:
        with self.lock:
            recent = sum(1 for t in self.accepted if t > now - WINDOW_S)
            ok = recent < self.limit
            if ok:
                self.accepted.append(now)
            self.calls.append((now, not ok))
            return ok

    def rate_429(self, start: float, end: float) -> float:
        calls = [limited for t, limited in self.calls if start <= t - START < end]
        return sum(calls) / max(len(calls), 1)


def run_against(
    dynamo: Dynamo, config: Config, provider: Provider, seconds: float, threads: int = 32
) -> None:
    clock = SimClock()
    instances = limiters(dynamo, config, clock, 4)

    def worker(limiter: RateLimiter, seed: int) -> Callable[[], None]:
        rng = random.Random(seed)

        def run() -> None:
            while clock() < START + seconds:
                lease = limiter.acquire(MODEL, Priority.normal, 100)
                if not lease:
                    clock.sleep(lease.wait_s + rng.uniform(0, 0.3))
                    continue
                clock.sleep(lease.send_at(0) - clock())  # sent when the spacing says
                ok = provider.call(clock())
                if not ok:
                    limiter.report_429(MODEL)
                elif provider.send_headers:
                    limiter.observe_limits(MODEL, provider.limit, None)
                clock.sleep(1.0)
                limiter.reconcile(lease, 100)

        return run

    clock.run([worker(instances[i % 4], i) for i in range(threads)])


@pytest.mark.slow
def test_429s_fade_when_the_provider_allows_half(dynamo: Dynamo, config: Config) -> None:
    config = with_model(config, 120, 10_000_000)
    provider = Provider(limit=60)
    run_against(dynamo, config, provider, seconds=180)
    assert provider.rate_429(0, 60) > 0  # it did run into the provider's real limit
    assert provider.rate_429(120, 180) < 0.05  # after two minutes: under 5 %
    assert len(provider.accepted) >= 0.6 * 60 * 3  # and it still uses most of it


@pytest.mark.slow
def test_limit_headers_are_learned(dynamo: Dynamo, config: Config) -> None:
    config = with_model(config, 120, 10_000_000)
    provider = Provider(limit=60, send_headers=True)
    run_against(dynamo, config, provider, seconds=130, threads=16)
    assert provider.rate_429(0, 130) == 0
    limiter = RateLimiter(dynamo.client, dynamo.table, config, clock=lambda: START + 130)
    assert limiter.status(MODEL).learned_requests == 60
    assert limiter.status(MODEL).limit_requests == 60


def test_the_factor_halves_once_per_cooldown_and_recovers(dynamo: Dynamo, config: Config) -> None:
    now = [START]
    limiter = RateLimiter(
        dynamo.client, dynamo.table, with_model(config, 240, 100_000), clock=lambda: now[0]
    )
    limiter.report_429(MODEL)
    limiter.report_429(MODEL)  # the same burst of 429s: no second decrease
    assert limiter.status(MODEL).factor == 0.5
    now[0] += 6
    limiter.report_429(MODEL)
    assert limiter.status(MODEL).factor == 0.25
    now[0] += 100  # ten steps of +0.05
    assert limiter.status(MODEL).factor == pytest.approx(0.75)
    now[0] += 100
    assert limiter.status(MODEL).factor == 1.0


def test_a_429_takes_a_tenth_off_when_the_limit_is_known(dynamo: Dynamo, config: Config) -> None:
    now = [START]
    limiter = RateLimiter(
        dynamo.client, dynamo.table, with_model(config, 240, 100_000), clock=lambda: now[0]
    )
    limiter.observe_limits(MODEL, 200, None)  # the provider's x-ratelimit-limit-requests
    limiter.report_429(MODEL)
    status = limiter.status(MODEL)
    assert status.factor == pytest.approx(0.9)
    assert status.limit_requests == pytest.approx(180)  # min(config, learned) x factor
    now[0] += 10  # 429s that keep coming: halved after all (from what grew back)
    factor = limiter.status(MODEL).factor
    limiter.report_429(MODEL)
    assert limiter.status(MODEL).factor == pytest.approx(factor * 0.5, abs=1e-3)
    now[0] += 100  # a lone 429 again, much later: a tenth off what it grew back to
    factor = limiter.status(MODEL).factor
    limiter.report_429(MODEL)
    assert limiter.status(MODEL).factor == pytest.approx(factor * 0.9, abs=1e-3)


def test_a_429_with_room_in_the_minute_leaves_the_limit(dynamo: Dynamo, config: Config) -> None:
    """The headers say most of the minute is left: a shorter period refused, or a fault."""
    limiter = RateLimiter(dynamo.client, dynamo.table, with_model(config, 240, 100_000))
    room = RateLimitInfo(limit_requests=240, remaining_requests=200, remaining_tokens=90_000)
    room = room.model_copy(update={"limit_tokens": 100_000})
    rate_limited = SimpleNamespace(status=429, account=None)
    limiter.observe_attempt(MODEL, rate_limited, room)
    assert limiter.status(MODEL).factor == 1.0
    spent = room.model_copy(update={"remaining_requests": 3})
    limiter.observe_attempt(MODEL, rate_limited, spent)  # the minute is spent: it was the limit
    assert limiter.status(MODEL).factor < 1.0
    limiter2 = RateLimiter(dynamo.client, dynamo.table, with_model(config, 240, 100_000))
    limiter2.observe_attempt("deepseek-chat", rate_limited, None)  # no headers: lowered
    assert limiter2.status("deepseek-chat").factor == 0.5


def test_a_429_of_a_shorter_period_spaces_the_sends_wider_for_everyone(
    dynamo: Dynamo, config: Config
) -> None:
    """The minute had room, the provider still said 429 (it enforces per second): every
    worker's sends are spaced a tenth wider, once per cooldown, and the spacing grows back
    (0.02 a second, never below 0.8); the minute's limit stays."""
    now = [START]
    cfg = with_model(config, 600, 10_000_000)
    one, two = (RateLimiter(dynamo.client, dynamo.table, cfg, clock=lambda: now[0]) for _ in "12")
    room = RateLimitInfo(limit_requests=600, remaining_requests=500)
    rate_limited = SimpleNamespace(status=429, account=None)

    def gap() -> float:  # between the two sends of one grant, spaced at the pace
        now[0] += 0.5  # the shard idle: the grant's sends start now
        lease = two.lease(MODEL, Priority.normal, [10, 10])
        assert lease.granted == 2
        spacing = lease.send_at(1) - lease.send_at(0)
        lease.close()
        return spacing

    assert gap() == pytest.approx(0.1 / PACE_MARGIN, abs=1e-4)
    one.observe_attempt(MODEL, rate_limited, room)
    one.observe_attempt(MODEL, rate_limited, room)  # within the cooldown: once
    status = two.status(MODEL)
    assert (status.factor, status.burst, status.limit_requests) == (1.0, 0.9, 600)
    assert gap() == pytest.approx(0.1 / PACE_MARGIN / 0.9, abs=1e-4)  # the other worker too
    now[0] += 1.5  # past the 2 s cooldown; grown back by 0.04 meanwhile
    one.observe_attempt(MODEL, rate_limited, room)
    assert two.status(MODEL).burst == pytest.approx(0.94 * 0.9)
    for _ in range(5):  # 429s that keep coming hold it at its floor
        now[0] += 2.0
        one.observe_attempt(MODEL, rate_limited, room)
    assert two.status(MODEL).burst == pytest.approx(0.8)
    now[0] += 10  # +0.02 a second
    assert two.status(MODEL).burst == pytest.approx(1.0)


class Unspread(random.Random):
    """Waits not spread at random: the earliest of each spread, so a test can name it."""

    def uniform(self, a: float, b: float) -> float:
        return a


def unspread(dynamo: Dynamo, config: Config, now: list[float]) -> RateLimiter:
    """A limiter on the clock ``now[0]`` whose waits are not spread."""
    return RateLimiter(dynamo.client, dynamo.table, config, clock=lambda: now[0], rng=Unspread())


def test_workers_told_to_wait_for_the_same_send_ask_again_at_different_times(
    dynamo: Dynamo, config: Config
) -> None:
    """Every worker denied for the pace would otherwise wake at one instant and all but
    one lose their write: the waits are spread over a quarter of the horizon."""
    cfg = with_model(config, 600, 10_000_000)
    limiter = RateLimiter(dynamo.client, dynamo.table, cfg, clock=lambda: START)
    assert limiter.lease(MODEL, Priority.normal, [10] * 10).granted == 10
    waits = [limiter.lease(MODEL, Priority.normal, [10]).wait_s for _ in range(20)]
    assert max(waits) - min(waits) > PACE_SPREAD_S / 2
    assert max(waits) - min(waits) <= PACE_SPREAD_S
    assert min(waits) >= 14 * 0.1 / PACE_MARGIN - 1 - 1e-4  # never before five sends fit


def test_a_denial_says_how_long_to_wait(dynamo: Dynamo, config: Config) -> None:
    now = [START + 0.25]
    limiter = unspread(dynamo, with_model(config, 61, 100_000), now)
    step = 60 / (61 * PACE_MARGIN)  # a little under a second between sends
    assert limiter.acquire(MODEL, Priority.normal, 10).send_at(0) == START + 0.25
    second = limiter.acquire(MODEL, Priority.normal, 10)  # spaced, booked ahead
    assert second.send_at(0) == pytest.approx(START + 0.25 + step, abs=1e-5)
    third = limiter.acquire(MODEL, Priority.normal, 10)
    assert not third  # its send would start more than the horizon (1 s) ahead
    assert third.wait_s == pytest.approx(2 * step - 1, abs=1e-5)
    assert third.grant.reason == "pace"
    now[0] += third.wait_s
    fourth = limiter.acquire(MODEL, Priority.normal, 10)
    assert fourth.send_at(0) == pytest.approx(START + 0.25 + 2 * step, abs=1e-5)


def test_a_pace_denial_waits_until_half_the_horizons_sends_fit(
    dynamo: Dynamo, config: Config
) -> None:
    """At 600/min the horizon (1 s) holds ten sends: a worker told to wait asks again when
    five fit, and gets five in one write (not one send per wake, each wake a race)."""
    now = [START]
    limiter = unspread(dynamo, with_model(config, 600, 10_000_000), now)
    step = 0.1 / PACE_MARGIN
    full = limiter.lease(MODEL, Priority.normal, [10] * 11)  # ten within the horizon
    assert full.granted == 10
    denied = limiter.lease(MODEL, Priority.normal, [10] * 10)
    assert (denied.granted, denied.grant.reason) == (0, "pace")
    assert denied.wait_s == pytest.approx(14 * step - 1, abs=1e-4)  # until five fit, not one
    now[0] += denied.wait_s
    lease = limiter.lease(MODEL, Priority.normal, [10] * 10)
    assert lease.granted == 5, (lease.wait_s, lease.grant.reason)
    assert lease.send_at(0) == pytest.approx(START + 10 * step)  # after the booked ones


def test_a_send_or_two_that_came_free_wait_for_the_refill(dynamo: Dynamo, config: Config) -> None:
    """Crumbs of the horizon go to nobody: a worker that finds only one or two sends free
    while it wants more waits until five fit (every waiting worker would race for the
    crumbs, and all but one lose the write); one that wants only what fits gets it."""
    now = [START]
    limiter = unspread(dynamo, with_model(config, 600, 10_000_000), now)
    step = 0.1 / PACE_MARGIN
    assert limiter.lease(MODEL, Priority.normal, [10] * 10).granted == 10
    now[0] += 2 * step  # two sends came free
    crumbs = limiter.lease(MODEL, Priority.normal, [10] * 10)
    assert (crumbs.granted, crumbs.grant.reason) == (0, "pace")
    assert now[0] + crumbs.wait_s == pytest.approx(START + 14 * step - 1, abs=1e-4)
    assert limiter.lease(MODEL, Priority.normal, [10] * 2).granted == 2  # wants no more


class Widest(random.Random):
    """Waits spread as far as allowed: the spread itself can be read off the wait."""

    def uniform(self, a: float, b: float) -> float:
        return b


def test_a_worker_denied_again_and_again_asks_less_often(dynamo: Dynamo, config: Config) -> None:
    """While a higher priority starves, a worker's pace denials in a row spread its next
    ask twice as wide each time (up to 4x a quarter of the horizon), so a herd of waiting
    workers does not race for every refill; a grant resets it, and the priority served
    next (none above it starving) asks undelayed."""
    now = [START]
    cfg = with_model(config, 600, 10_000_000)
    critical, normal = (
        RateLimiter(dynamo.client, dynamo.table, cfg, clock=lambda: now[0], rng=Widest())
        for _ in range(2)
    )
    assert critical.lease(MODEL, Priority.critical, [10] * 10).granted == 10
    base = 14 * 0.1 / PACE_MARGIN - 1  # until five fit
    top = [critical.acquire(MODEL, Priority.critical, 10).wait_s - base for _ in range(3)]
    assert top == pytest.approx([PACE_SPREAD_S] * 3, abs=1e-4)  # critical starves now
    spreads = [normal.acquire(MODEL, Priority.normal, 10).wait_s - base for _ in range(5)]
    assert spreads == pytest.approx([PACE_SPREAD_S * k for k in (1, 2, 4, 4, 4)], abs=1e-4)
    now[0] += 2.0  # the booked sends are past: a grant, and the backoff starts over
    assert normal.acquire(MODEL, Priority.normal, 10).granted == 1
    assert normal.lease(MODEL, Priority.normal, [10] * 10).granted == 9
    again = normal.acquire(MODEL, Priority.normal, 10)
    assert again.wait_s - base == pytest.approx(PACE_SPREAD_S, abs=1e-4)


def test_a_lease_takes_several_jobs_in_one_write_and_gives_back(
    dynamo: Dynamo, config: Config
) -> None:
    limiter = RateLimiter(
        dynamo.client, dynamo.table, with_model(config, 600, 100_000), clock=lambda: START
    )
    calls: list[str] = []
    dynamo.client.meta.events.register(
        "before-call.dynamodb", lambda model, **_: calls.append(model.name)
    )
    with limiter.lease(MODEL, Priority.high, [1000] * 10) as lease:
        assert lease.granted == 10
        for i in range(6):
            lease.reconcile(i, 400)
        for i in range(6, 10):
            lease.release(i)
    assert calls.count("UpdateItem") == 2  # take 10, give back 4 jobs and 3,600 tokens
    status = limiter.status(MODEL)
    assert (status.used_requests, status.used_tokens) == (6, 6 * 400)


def test_a_lease_is_cut_to_what_fits(dynamo: Dynamo, config: Config) -> None:
    limiter = RateLimiter(
        dynamo.client, dynamo.table, with_model(config, 300, 100_000), clock=lambda: START
    )
    lease = limiter.lease(MODEL, Priority.normal, [100] * 10)
    # sends spaced at 60 / (300 x 0.99) s: now and four more within the horizon (1 s)
    assert lease.granted == 5, (lease.wait_s, lease.grant.reason)
    assert lease.wait_s > 0
    assert lease.grant.reason == "pace"


def test_reconcile_debits_real_usage_above_the_estimate(dynamo: Dynamo, config: Config) -> None:
    limiter = RateLimiter(
        dynamo.client, dynamo.table, with_model(config, 600, 100_000), clock=lambda: START
    )
    limiter.reconcile(limiter.acquire(MODEL, Priority.normal, 1000), 1500)
    assert limiter.status(MODEL).used_tokens == 1500


def test_a_request_bigger_than_the_minute_is_refused(dynamo: Dynamo, config: Config) -> None:
    limiter = RateLimiter(
        dynamo.client, dynamo.table, with_model(config, 600, 30_000), clock=lambda: START
    )
    with pytest.raises(RequestTooLargeError, match=r"40000 estimated tokens.*30000 tokens"):
        limiter.acquire(MODEL, Priority.normal, 40_000)


def test_a_lease_with_a_job_bigger_than_the_minute_behind_one_that_fits_is_refused(
    dynamo: Dynamo, config: Config
) -> None:
    """The too-large job is refused at once wherever it stands in the lease (the worker's
    ``Capacity`` then asks for each job alone): behind one that fits it was told to wait a
    minute for a limit it can never fit, handed back, and refused only then."""
    limiter = RateLimiter(
        dynamo.client, dynamo.table, with_model(config, 600, 30_000), clock=lambda: START
    )
    with pytest.raises(RequestTooLargeError, match=r"40000 estimated tokens"):
        limiter.lease(MODEL, Priority.normal, [100, 40_000])
    assert limiter.lease(MODEL, Priority.normal, [100]).granted == 1


def test_jobs_that_together_exceed_the_minute_wait_for_room_not_a_minute(
    dynamo: Dynamo, config: Config
) -> None:
    """Three jobs of 400 tokens at 1,000 a minute: two are granted, the third fits alone
    and asks again within about a second (the two may give most of their estimate back at
    once), not after the minute an estimate bigger than the limit waits for."""
    limiter = RateLimiter(
        dynamo.client, dynamo.table, with_model(config, 600, 1_000), clock=lambda: START
    )
    lease = limiter.lease(MODEL, Priority.normal, [400, 400, 400])
    assert lease.granted == 2
    assert lease.wait_s <= 2.0, lease.wait_s


def test_capacity_refuses_the_too_large_job_and_grants_its_neighbour(
    dynamo: Dynamo, config: Config
) -> None:
    """An invocation's two jobs ask together, the one that fits first: one lease for both
    is refused, each asks alone, the fitting one is granted and the other refused."""
    limiter = RateLimiter(
        dynamo.client, dynamo.table, with_model(config, 600, 30_000), clock=lambda: START
    )

    async def both() -> list[Slot | float | BaseException]:
        capacity = Capacity(limiter, Priority.normal, jobs=2)
        return await asyncio.gather(
            capacity.take(MODEL, 100), capacity.take(MODEL, 40_000), return_exceptions=True
        )

    fine, huge = asyncio.run(both())
    assert isinstance(fine, tuple) and fine[0].granted == 1, fine
    assert isinstance(huge, RequestTooLargeError), huge


@pytest.mark.slow
def test_shards_split_the_limit(dynamo: Dynamo, config: Config) -> None:
    config = with_model(config, 120, 1_000_000)
    now = [START]
    limiter = RateLimiter(dynamo.client, dynamo.table, config, shards=4, clock=lambda: now[0])
    granted = 0
    for _ in range(130):  # 130 s, 6 asks a second: more than the limit
        granted += sum(limiter.acquire(MODEL, Priority.normal, 10).granted for _ in range(6))
        now[0] += 1
    status = limiter.status(MODEL)
    assert status.shards == 4
    assert status.limit_requests == 120
    assert status.used_requests <= 120
    assert 0.9 * 120 * 130 / 60 <= granted <= 120 * 130 / 60 + 120


def test_unknown_model_is_named(dynamo: Dynamo, config: Config) -> None:
    limiter = RateLimiter(dynamo.client, dynamo.table, config)
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        limiter.acquire("nope", Priority.normal, 1)
