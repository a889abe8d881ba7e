"""The shared budget: reserve the worst case, settle exactly once, never pass the limit."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import boto3
import pytest

from chatbatch.budget import Budget, BudgetDeferred, OverRequestCap, seconds_to_midnight
from chatbatch.config import Config
from chatbatch.local.aws import create_resources, moto_in_process
from chatbatch.pricing import to_nanos

USD = 1_000_000_000  # nanos


def with_budget(config: Config, **budget: object) -> Config:
    return config.model_copy(update={"budget": config.budget.model_copy(update=budget)})


class Clock:
    def __init__(self, now: float = 1_790_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def table(config: Config) -> Iterator[str]:
    with moto_in_process():
        yield create_resources(config).table


def make(config: Config, table: str, clock: Clock | None = None, **budget: object) -> Budget:
    return Budget(
        boto3.client("dynamodb"), table, with_budget(config, **budget), clock=clock or Clock()
    )


def test_racing_reservations_never_pass_one_dollar(config: Config, table: str):
    budget = make(config, table, daily_usd=Decimal(1))
    settled: list[int] = []
    lock = threading.Lock()

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        refusals = 0
        for n in range(1000):
            worst = rng.randint(USD // 100, USD // 40)  # $0.010 - $0.025
            try:
                r = budget.reserve(f"t{seed}-{n}", worst)
            except BudgetDeferred:
                refusals += 1
                if refusals >= 5:
                    return
                continue
            actual = worst * rng.randint(60, 100) // 100
            assert budget.settle(r, actual)
            with lock:
                settled.append(actual)

    with ThreadPoolExecutor(64) as pool:
        list(pool.map(worker, range(64)))
    total = sum(settled)
    usage = budget.usage()
    assert total <= USD
    assert total >= 0.9 * USD
    assert to_nanos(usage.spent_usd) == total  # the ledger equals the sum of settlements
    assert usage.reserved_usd == 0


def test_settle_and_reserve_are_idempotent_per_job(config: Config, table: str):
    budget = make(config, table, daily_usd=Decimal(1))
    r = budget.reserve("b#job", USD // 10)
    again = budget.reserve("b#job", USD // 10)  # a redelivered message
    assert again == r
    assert budget.usage().reserved_usd == Decimal("0.1")
    assert budget.settle(r, USD // 20)
    assert not budget.settle(r, USD // 20)  # counted once
    usage = budget.usage()
    assert (usage.spent_usd, usage.reserved_usd) == (Decimal("0.05"), 0)


def test_crashed_reservation_is_reclaimed_after_its_ttl(config: Config, table: str):
    clock = Clock()
    budget = make(config, table, clock, daily_usd=Decimal(1), reservation_ttl_s=900)
    budget.reserve("crashed", USD * 9 // 10)  # a worker dies here: never settled
    with pytest.raises(BudgetDeferred):
        budget.reserve("next", USD // 5)
    clock.now += 901
    r = budget.reserve("next", USD // 5)  # the dead reservation was reclaimed first
    assert budget.settle(r, USD // 5)
    usage = budget.usage()
    assert (usage.spent_usd, usage.reserved_usd) == (Decimal("0.2"), 0)


def test_daily_deferral_until_midnight_and_raising_the_limit(config: Config, table: str):
    clock = Clock()
    budget = make(config, table, clock, daily_usd=Decimal("0.5"))
    budget.reserve("a", USD // 2)
    with pytest.raises(BudgetDeferred, match=r"daily budget \$0.5 reached") as caught:
        budget.reserve("b", 1)
    assert caught.value.retry_after_s == pytest.approx(seconds_to_midnight(clock.now))
    budget.set_daily_limit(Decimal(2))
    assert budget.reserve("b", USD).nanos == USD


def test_batch_budget_defers_its_own_jobs_only(config: Config, table: str):
    budget = make(config, table, daily_usd=Decimal(10))
    budget.reserve("a", USD // 2, batch_id="small", batch_limit_nanos=USD // 2)
    with pytest.raises(BudgetDeferred, match="batch small reached its budget") as caught:
        budget.reserve("b", USD // 10, batch_id="small", batch_limit_nanos=USD // 2)
    assert caught.value.retry_after_s == 300
    budget.reserve("c", USD // 10, batch_id="other", batch_limit_nanos=USD // 2)


def test_request_over_the_cap_is_refused_with_the_amounts(config: Config, table: str):
    budget = make(config, table, request_cap_usd=Decimal("0.01"))
    with pytest.raises(OverRequestCap, match=r"worst case \$0.02 is above .* \$0.01"):
        budget.reserve("big", USD // 50)


def test_release_gives_the_reservation_back(config: Config, table: str):
    budget = make(config, table, daily_usd=Decimal(1))
    r = budget.reserve("x", USD)
    assert budget.release(r)
    assert not budget.release(r)
    assert budget.usage().reserved_usd == 0
