"""Review 11: attacks on the sharded budget ledger (issue 18) that broke its promise, the
shards' ``committed`` never adding up past the limit: a daily limit lowered while the
shards hold money (a shard over its new slice does not stop the others), and a batch
whose ledger count changes between two asks (registered unsharded, then again with
shards: ``Batches.register`` keeps counting, the ledger got new slices). Both fixed;
so is an overrun on one shard (a settle above its reservation: spread onto the others)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from decimal import Decimal

import boto3
import pytest
from test_budget import USD, Clock
from test_budget_shards import FOUR_SHARDS, committed, sharded

from chatbatch.core.config import Config
from chatbatch.core.days import utc_day
from chatbatch.local.aws import create_resources, moto_in_process
from chatbatch.state.batches import Batches
from chatbatch.state.budget.budget import Budget
from chatbatch.state.budget.errors import BudgetDeferred
from chatbatch.state.budget.ledger import batch_ledger_key, day_key


@pytest.fixture
def table(config: Config) -> Iterator[str]:
    with moto_in_process():
        yield create_resources(config).table


CENT = USD // 100


class Picks(random.Random):
    """Shard picks the test names (``next``): which shard a reservation is charged on."""

    def __init__(self) -> None:
        super().__init__(0)
        self.next = 0

    def randrange(self, *args: object, **kwargs: object) -> int:  # type: ignore[override]
        stop = int(args[-1]) if len(args) > 1 else int(args[0])  # type: ignore[call-overload]
        return min(self.next, stop - 1)


def budget_with(config: Config, table: str, clock: Clock, picks: Picks) -> Budget:
    return Budget(boto3.client("dynamodb"), table, config, clock=clock, rng=picks)


def reserve_all(budget: Budget, picks: Picks, name: str, nanos: int, shards: list[int]) -> int:
    """Reserve ``nanos`` on each of ``shards``; how many were granted."""
    granted = 0
    for k in shards:
        picks.next = k
        try:
            budget.reserve(f"{name}{k}", nanos)
            granted += 1
        except BudgetDeferred:
            pass
    return granted


def test_review11_a_lowered_limit_is_not_passed_by_the_other_shards(
    config: Config, table: str
) -> None:
    """$0.20 held on shard 0 of four ($1: $0.25 slices); the limit lowered to $0.40 ($0.10
    slices). The day has $0.20 of room; the unsharded ledger would grant two $0.10 jobs
    and refuse the third. Each of shards 1-3 has its whole $0.10 slice."""
    clock, picks = Clock(), Picks()
    budget = budget_with(sharded(config, FOUR_SHARDS, daily_usd=Decimal(1)), table, clock, picks)
    picks.next = 0
    budget.reserve("early", 20 * CENT)
    budget.set_daily_limit(Decimal("0.40"))
    granted = reserve_all(budget, picks, "late", 10 * CENT, [1, 2, 3])
    day = utc_day(clock.now)
    total = sum(committed(budget, [day_key(day, i) for i in range(4)]))
    assert total <= 40 * CENT, f"the shards hold ${total / USD} on a $0.40 day"
    assert granted == 2, "the day's room ($0.20) is two $0.10 jobs"


def test_review11_a_batch_registered_again_with_shards_keeps_its_limit(
    config: Config, table: str
) -> None:
    """A batch registered by an unsharded deployment, then again (the producer re-submits)
    by one with a target: ``Batches.register`` gives it counter shards, and the worker
    asks with that count (``pipeline._ask``). Its ledger held $0.90 of $1 on the one item;
    the new count must not give it three more slices."""
    clock, picks = Clock(), Picks()
    ddb = boto3.client("dynamodb")
    meta = {"total": 10, "priority": "normal", "checksum": "c", "registrant": "p"}
    Batches(ddb, table).register("b", budget_nanos=USD, **meta)  # type: ignore[arg-type]
    budget = budget_with(sharded(config, FOUR_SHARDS, daily_usd=Decimal(10)), table, clock, picks)
    before = Batches(ddb, table).get("b")
    assert before is not None and before.counter_shards == 1
    picks.next = 0
    budget.reserve("b#old", 90 * CENT, batch_id="b", batch_limit_nanos=USD, batch_shards=1)
    Batches(ddb, table, counter_shards=4).register("b", budget_nanos=USD, **meta)  # type: ignore[arg-type]
    after = Batches(ddb, table).get("b")
    assert after is not None
    count = after.counter_shards  # what the worker now asks with
    granted = 0
    for k in range(1, 4):
        picks.next = k
        try:
            budget.reserve(
                f"b#new{k}", 10 * CENT, batch_id="b", batch_limit_nanos=USD, batch_shards=count
            )
            granted += 1
        except BudgetDeferred:
            pass
    total = sum(committed(budget, [batch_ledger_key("b", i) for i in range(4)]))
    assert total <= USD, f"batch b's ledger holds ${total / USD} of its $1 (count {count})"
    assert granted == 1


def test_review11_an_overrun_on_one_shard_is_not_spent_again_by_the_others(
    config: Config, table: str
) -> None:
    """A settle above the reservation (a provider that bills past the bound) puts its shard
    over its slice. The unsharded ledger would then refuse what no longer fits; the other
    shards must not each still grant their whole slice."""
    clock, picks = Clock(), Picks()
    budget = budget_with(sharded(config, FOUR_SHARDS, daily_usd=Decimal(1)), table, clock, picks)
    picks.next = 0
    r = budget.reserve("small", 5 * CENT)
    assert budget.settle(r, 50 * CENT)  # billed $0.50 under a $0.05 reservation
    granted = reserve_all(budget, picks, "late", 25 * CENT, [1, 2, 3])
    total = sum(committed(budget, [day_key(utc_day(clock.now), i) for i in range(4)]))
    assert total <= USD, f"the shards hold ${total / USD} on a $1 day"
    assert granted == 2
    with pytest.raises(BudgetDeferred):
        picks.next = 3
        budget.reserve("past", CENT)
