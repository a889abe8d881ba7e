"""The budget's ledgers in shards (``scale.target_jobs_per_s``): each shard is charged
against its slice of the limit, a shard without room makes room from the others, the
shards' sum never passes the limit, and the day's shard count is fixed by its first
reservation whatever the config of later workers. ``test_budget_model.py`` runs the
sharded budget against its model; ``test_budget.py`` holds the unsharded cases."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import boto3
import pytest
from test_budget import USD, Clock, race, with_budget

from chatbatch.core.config import Config
from chatbatch.core.days import utc_day
from chatbatch.local.aws import create_resources, moto_in_process
from chatbatch.state.budget.budget import Budget
from chatbatch.state.budget.errors import BudgetDeferred
from chatbatch.state.budget.ledger import batch_ledger_key, day_key, share
from chatbatch.state.budget.reservations import Ask
from chatbatch.state.ddb import int_of

FOUR_SHARDS = 3_800  # jobs/s: 3.95 items at half their write limit (busiest x1.3) -> 4
BATCH_SIZE = 10  # jobs per invocation in these plans (the shard counts above are for it)


@pytest.fixture
def table(config: Config) -> Iterator[str]:
    with moto_in_process():
        yield create_resources(config).table


def sharded(config: Config, target: float | None = FOUR_SHARDS, **budget: object) -> Config:
    scale = config.scale.model_copy(update={"target_jobs_per_s": target})
    worker = config.worker.model_copy(update={"batch_size": BATCH_SIZE})
    return with_budget(config, **budget).model_copy(update={"scale": scale, "worker": worker})


def make(config: Config, table: str, clock: Clock, seed: int = 0) -> Budget:
    return Budget(boto3.client("dynamodb"), table, config, clock=clock, rng=random.Random(seed))


def committed(budget: Budget, keys: list[dict]) -> list[int]:
    ddb = boto3.client("dynamodb")
    items = [ddb.get_item(TableName=budget._table, Key=k, ConsistentRead=True) for k in keys]
    return [int_of(item.get("Item"), "committed") for item in items]


def day_shards(budget: Budget, clock: Clock, count: int = 4) -> list[int]:
    return committed(budget, [day_key(utc_day(clock.now), i) for i in range(count)])


def test_the_days_count_is_fixed_by_its_first_reservation(config: Config, table: str) -> None:
    clock = Clock()
    four = make(sharded(config, daily_usd=Decimal(1)), table, clock)
    one = make(sharded(config, None, daily_usd=Decimal(1)), table, clock)
    day = utc_day(clock.now)
    assert one.shards(day, create=False) == 1  # nobody reserved: nothing fixed yet
    four.reserve("a", USD // 10)
    assert four.shards(day) == one.shards(day) == 4  # the other config follows the day's
    got = [one.reserve(f"b{i}", USD // 10) for i in range(8)]
    assert {r.shard for r in got} > {0}, "an unsharded worker charges the day's shards"
    assert sum(day_shards(one, clock)) == 9 * USD // 10
    assert one.usage().reserved_usd == Decimal("0.9")
    # the next day begins with the config of whoever reserves first
    clock.now += 86_400
    one.reserve("c", USD // 10)
    assert four.shards(utc_day(clock.now)) == 1


def test_a_day_begun_unsharded_stays_one_item_until_midnight(config: Config, table: str) -> None:
    """The day's ledger existed before shards were configured (no layout item): a worker
    configured for shards must not split a limit whose one item holds money already."""
    clock = Clock()
    day = utc_day(clock.now)
    ddb = boto3.client("dynamodb")
    ddb.put_item(TableName=table, Item={**day_key(day), "committed": {"N": str(USD // 2)}})
    four = make(sharded(config, daily_usd=Decimal(1)), table, clock)
    assert four.shards(day) == 1
    four.reserve("a", 4 * USD // 10)
    with pytest.raises(BudgetDeferred):
        four.reserve("b", 2 * USD // 10)  # 0.5 + 0.4 + 0.2 > 1
    assert committed(four, [day_key(day)]) == [9 * USD // 10]


def test_the_shards_fill_the_limit_exactly_and_refuse_past_it(config: Config, table: str) -> None:
    clock = Clock()
    budget = make(sharded(config, daily_usd=Decimal(1)), table, clock)
    held = [budget.reserve(f"j{i}", USD // 10) for i in range(10)]  # $1 over $0.25 slices
    assert len({r.shard for r in held}) > 1
    with pytest.raises(BudgetDeferred) as refused:
        budget.reserve("one-more", 1)
    assert refused.value.until is None, "reservations in flight hold it: not spent, no pause"
    slices = [share(USD, 4, i) for i in range(4)]
    assert sum(day_shards(budget, clock)) == USD
    assert all(c <= s for c, s in zip(day_shards(budget, clock), slices, strict=True))
    for r in held:  # spent at their worst case: the day is over, a pause until midnight
        assert budget.settle(r, r.nanos)
    with pytest.raises(BudgetDeferred) as spent:
        budget.reserve("tomorrow", 1)
    assert spent.value.until is not None
    usage = budget.usage()
    assert (usage.spent_usd, usage.reserved_usd) == (Decimal(1), 0)


def test_a_job_no_shard_fits_gathers_the_others_room(config: Config, table: str) -> None:
    """$0.15 on each of four $0.25 slices leaves $0.10 in each: a $0.30 job fits only the
    shards together; the room is moved to one shard, and the sum stays at the limit."""
    clock = Clock()
    budget = make(sharded(config, daily_usd=Decimal(1)), table, clock)
    for i in range(40):  # until each shard holds one
        if all(c >= 15 * USD // 100 for c in day_shards(budget, clock)):
            break
        budget.reserve(f"small{i}", 15 * USD // 100)
    assert day_shards(budget, clock) == [15 * USD // 100] * 4
    big = budget.reserve("big", 30 * USD // 100)
    shards = day_shards(budget, clock)
    assert sum(shards) == 90 * USD // 100 and shards[big.shard] <= share(USD, 4, big.shard)
    with pytest.raises(BudgetDeferred):
        budget.reserve("no-room", 15 * USD // 100)
    assert budget.release(big)  # given back to the shard it was charged on
    assert sum(day_shards(budget, clock)) == 60 * USD // 100


def test_a_batch_ledger_in_shards_holds_the_batch_to_its_limit(config: Config, table: str) -> None:
    clock = Clock()
    budget = make(sharded(config, daily_usd=Decimal(10)), table, clock)
    asks = [Ask(f"b#j{i}", USD // 10, "b", USD, batch_shards=3) for i in range(3)]
    group = budget.reserve_many(asks)  # one shard of each ledger for the group
    assert len(group) == 3 and len({(r.shard, r.batch_shard) for r in group.values()}) == 1
    alone = [  # the last one fits only the three shards' rests together
        budget.reserve(f"b#k{i}", USD // 10, batch_id="b", batch_limit_nanos=USD, batch_shards=3)
        for i in range(7)
    ]
    with pytest.raises(BudgetDeferred, match="batch b"):
        budget.reserve("b#over", USD // 10, batch_id="b", batch_limit_nanos=USD, batch_shards=3)
    batch = committed(budget, [batch_ledger_key("b", i) for i in range(3)])
    assert sum(batch) == USD and all(c <= share(USD, 3, i) for i, c in enumerate(batch))
    for r in [*group.values(), *alone]:
        assert budget.settle(r, r.nanos // 2)
    assert sum(committed(budget, [batch_ledger_key("b", i) for i in range(3)])) == USD // 2
    assert budget.usage().spent_usd == Decimal("0.5")


def test_racing_workers_on_four_shards_never_pass_one_dollar(config: Config, table: str) -> None:
    """64 threads on 8 budgets (8 worker processes), each its own shard picks."""
    clock = Clock()
    cfg = sharded(config, daily_usd=Decimal(1))
    budgets = [make(cfg, table, clock, seed) for seed in range(8)]
    ledger_over: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.01):
            reply = boto3.client("dynamodb").transact_get_items(  # one snapshot of the four
                TransactItems=[
                    {"Get": {"TableName": table, "Key": day_key(utc_day(clock.now), i)}}
                    for i in range(4)
                ]
            )
            total = sum(int_of(r.get("Item"), "committed") for r in reply["Responses"])
            if total > USD:
                ledger_over.append(total)

    def draw(rng: random.Random) -> tuple[int, Callable[[], int]]:
        worst = rng.randint(USD // 100, USD // 40)
        return worst, lambda: worst * rng.randint(60, 100) // 100

    class Spread:  # each thread reserves through one of the eight
        def __init__(self) -> None:
            self._n = 0
            self._lock = threading.Lock()

        def reserve(self, key: str, nanos: int) -> object:
            with self._lock:
                self._n += 1
                budget = budgets[self._n % len(budgets)]
            return budget.reserve(key, nanos)

        def settle(self, r: object, actual: int) -> bool:
            return budgets[0].settle(r, actual)  # type: ignore[arg-type]

    with ThreadPoolExecutor(1) as pool:
        sampler = pool.submit(sample)
        total = sum(actual for _, actual in race(Spread(), draw))  # type: ignore[arg-type]
        stop.set()
        sampler.result()
    assert ledger_over == []
    assert 0.9 * USD <= total <= USD
    usage = budgets[0].usage()
    assert Decimal(total) / USD == usage.spent_usd and usage.reserved_usd == 0
