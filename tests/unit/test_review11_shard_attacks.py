"""Review 11: attacks on the sharded budget ledger (issue 18) that its promise withstood:
racing gathers sampled in one read, reclaim and group markers on shard partitions, the
layout race between configs, a settle after midnight on another layout, two batches in
one group, and the deferral kind (pause or busy) from the shards' totals."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import boto3
import pytest
from test_budget import USD, Clock
from test_budget_shards import FOUR_SHARDS, committed, make, sharded
from test_review11_shard_breaks import CENT, Picks, budget_with

from chatbatch.core.config import Config
from chatbatch.core.days import utc_day
from chatbatch.local.aws import create_resources, moto_in_process
from chatbatch.state.budget.errors import BudgetDeferred
from chatbatch.state.budget.ledger import batch_ledger_key, day_key, open_key, share
from chatbatch.state.budget.reservations import Ask
from chatbatch.state.ddb import int_of


@pytest.fixture
def table(config: Config) -> Iterator[str]:
    with moto_in_process():
        yield create_resources(config).table


def snapshot(table: str, keys: list[dict]) -> list[int]:
    """The ``committed`` of ``keys`` at one instant (one transactional read)."""
    reply = boto3.client("dynamodb").transact_get_items(
        TransactItems=[{"Get": {"TableName": table, "Key": k}} for k in keys]
    )
    return [int_of(r.get("Item"), "committed") for r in reply["Responses"]]


def test_review11_racing_gathers_keep_every_shard_in_its_slice(config: Config, table: str) -> None:
    """Jobs of $0.08-$0.30 on $0.25 slices: most need a gather (a transfer). 32 threads
    on 8 budgets reserve, settle and release; a sampler reads the four shards at one
    instant: the sum never passes $1, no shard its slice; at the end nothing is held and
    every cent settled is in the ledger."""
    clock = Clock()
    cfg = sharded(config, FOUR_SHARDS, daily_usd=Decimal(1))
    budgets = [make(cfg, table, clock, seed) for seed in range(8)]
    keys = [day_key(utc_day(clock.now), i) for i in range(4)]
    slices = [share(USD, 4, i) for i in range(4)]
    over: list[list[int]] = []
    stop = threading.Event()
    spent: list[int] = []
    lock = threading.Lock()

    def sample() -> None:
        while not stop.wait(0.005):
            got = snapshot(table, keys)
            if sum(got) > USD or any(c > s for c, s in zip(got, slices, strict=True)):
                over.append(got)

    def worker(seed: int) -> None:
        rng, budget = random.Random(seed), budgets[seed % 8]
        for n in range(12):
            worst = rng.randint(8 * CENT, 30 * CENT)
            try:
                r = budget.reserve(f"g{seed}-{n}", worst)
            except BudgetDeferred:
                continue
            if rng.random() < 0.3:
                assert budget.release(r)
                continue
            actual = worst * rng.randint(0, 100) // 100
            assert budget.settle(r, actual)
            with lock:
                spent.append(actual)

    with ThreadPoolExecutor(33) as pool:
        sampler = pool.submit(sample)
        for f in [pool.submit(worker, seed) for seed in range(32)]:
            f.result()
        stop.set()
        sampler.result()
    assert over == []
    usage = budgets[0].usage()
    assert usage.reserved_usd == 0 and usage.spent_usd == Decimal(sum(spent)) / USD
    assert sum(snapshot(table, keys)) == sum(spent) <= USD


def test_review11_reclaim_on_a_shard_partition(config: Config, table: str) -> None:
    """A dead reservation alone on shard 2 and a dead group on shard 3: reclaim finds both
    markers in their partitions, gives the money back to the shards they were charged on,
    and leaves no marker."""
    clock, picks = Clock(), Picks()
    cfg = sharded(config, FOUR_SHARDS, daily_usd=Decimal(1), reservation_ttl_s=900)
    budget = budget_with(cfg, table, clock, picks)
    day = utc_day(clock.now)
    picks.next = 2
    alone = budget.reserve("alone", 10 * CENT)
    picks.next = 3
    group = budget.reserve_many([Ask(f"g{i}", 5 * CENT) for i in range(3)])
    assert alone.shard == 2 and {r.shard for r in group.values()} == {3}
    assert committed(budget, [day_key(day, i) for i in range(4)]) == [0, 0, 10 * CENT, 15 * CENT]
    clock.now += 1000
    assert budget.reclaim() == 4
    assert committed(budget, [day_key(day, i) for i in range(4)]) == [0, 0, 0, 0]
    ddb = boto3.client("dynamodb")
    for k in range(4):
        pk = open_key(day, "", k)["pk"]
        left = ddb.query(
            TableName=table,
            KeyConditionExpression="pk = :pk",
            ExpressionAttributeValues={":pk": pk},
        )
        assert left["Items"] == [], f"markers left in partition {k}"


def test_review11_a_group_marker_on_a_shard_is_closed_where_it_is(
    config: Config, table: str
) -> None:
    """``Finals.end``'s ``close_group_marker`` with the group's ``marker_at`` on shard 1:
    kept while one is open, deleted from shard 1's partition once all are settled."""
    clock, picks = Clock(), Picks()
    budget = budget_with(sharded(config, FOUR_SHARDS, daily_usd=Decimal(1)), table, clock, picks)
    picks.next = 1
    group = budget.reserve_many([Ask(f"g{i}", 5 * CENT) for i in range(2)])
    first = next(iter(group.values()))
    at = first.marker_at()
    assert at.shard == 1
    ddb = boto3.client("dynamodb")
    assert "Item" in ddb.get_item(TableName=table, Key=open_key(*at))
    a, b = group.values()
    assert budget.settle(a, CENT)
    assert not budget.close_group_marker(at, sorted(group))
    assert budget.settle(b, CENT)
    assert budget.close_group_marker(at, sorted(group))
    assert "Item" not in ddb.get_item(TableName=table, Key=open_key(*at))
    assert sum(committed(budget, [day_key(at.day, i) for i in range(4)])) == 2 * CENT


@pytest.mark.parametrize("trial", range(6))
def test_review11_two_configs_racing_on_a_fresh_day_agree(
    config: Config, table: str, trial: int
) -> None:
    """Eight workers, half planned for four shards, half unsharded, reserve at once on a
    fresh day: all agree on one count, and every reservation is on a shard of it."""
    clock = Clock(1_790_000_000.0 + trial * 86_400)
    cfgs = [sharded(config, t, daily_usd=Decimal(1)) for t in (FOUR_SHARDS, None)]
    budgets = [make(cfgs[i % 2], table, clock, i) for i in range(8)]
    barrier = threading.Barrier(8)

    def go(i: int) -> int:
        barrier.wait()
        return budgets[i].reserve(f"r{trial}-{i}", CENT).shard

    with ThreadPoolExecutor(8) as pool:
        shards = list(pool.map(go, range(8)))
    day = utc_day(clock.now)
    counts = {b.shards(day) for b in budgets}
    assert len(counts) == 1
    (count,) = counts
    assert all(s < count for s in shards)
    assert sum(committed(budgets[0], [day_key(day, i) for i in range(4)])) == 8 * CENT
    assert budgets[0].usage(day).reserved_usd == Decimal("0.08")


def test_review11_a_reader_before_the_layout_fixes_nothing(config: Config, table: str) -> None:
    """``usage`` and ``reclaim`` on a fresh day write no layout: the first reservation, from
    a worker planned for four, still fixes four."""
    clock = Clock()
    one = make(sharded(config, None, daily_usd=Decimal(1)), table, clock)
    four = make(sharded(config, FOUR_SHARDS, daily_usd=Decimal(1)), table, clock)
    assert one.usage().reserved_usd == 0 and one.reclaim() == 0
    four.reserve("a", CENT)
    assert one.shards(utc_day(clock.now)) == 4


def test_review11_a_settle_after_midnight_goes_to_its_days_shard(
    config: Config, table: str
) -> None:
    """Reserved on day D, shard 2 of four; day D+1 begins unsharded. The settle, a release
    and a reclaim after midnight go to D's shard 2, D+1's ledger holds only its own."""
    clock, picks = Clock(), Picks()
    four = budget_with(sharded(config, FOUR_SHARDS, daily_usd=Decimal(1)), table, clock, picks)
    one = make(sharded(config, None, daily_usd=Decimal(1), reservation_ttl_s=900), table, clock)
    d0 = utc_day(clock.now)
    picks.next = 2
    settled, released, dead = (four.reserve(k, 10 * CENT) for k in ("s", "r", "d"))
    clock.now += 86_400
    d1 = utc_day(clock.now)
    one.reserve("tomorrow", 5 * CENT)
    assert one.shards(d1) == 1 and one.shards(d0) == 4
    assert one.settle(settled, 7 * CENT) and one.release(released)
    assert one.reclaim() == 1
    assert committed(one, [day_key(d0, i) for i in range(4)]) == [0, 0, 7 * CENT, 0]
    assert one.usage(d0).spent_usd == Decimal("0.07") and one.usage(d0).reserved_usd == 0
    assert committed(one, [day_key(d1)]) == [5 * CENT]
    assert not one.release(dead), "reclaimed already: released once"


def test_review11_one_group_two_sharded_batches(config: Config, table: str) -> None:
    """``reserve_many`` with jobs of two limited batches (three and two shards): one charge
    per ledger, each batch's sum on one of its shards, settled back there. (A group whose
    sum is above one shard's slice is refused whole: its jobs then reserve one by one.)"""
    clock = Clock()
    budget = make(sharded(config, FOUR_SHARDS, daily_usd=Decimal(10)), table, clock)
    asks = [Ask(f"a{i}", 10 * CENT, "a", USD, batch_shards=3) for i in range(3)]
    asks += [Ask(f"b{i}", 10 * CENT, "b", USD // 2, batch_shards=2) for i in range(2)]
    group = budget.reserve_many(asks)
    assert len(group) == 5
    a = committed(budget, [batch_ledger_key("a", i) for i in range(3)])
    b = committed(budget, [batch_ledger_key("b", i) for i in range(2)])
    assert sorted(a) == [0, 0, 30 * CENT] and sorted(b) == [0, 20 * CENT]
    refused = budget.reserve_many(
        [Ask(f"b{i}", 20 * CENT, "b", USD // 2, batch_shards=2) for i in (7, 8)]
    )
    assert refused == {}, "batch b has $0.30 left of $0.50"
    for r in group.values():
        assert budget.settle(r, r.nanos // 2)
    assert sum(committed(budget, [batch_ledger_key("a", i) for i in range(3)])) == 15 * CENT
    assert sum(committed(budget, [batch_ledger_key("b", i) for i in range(2)])) == 10 * CENT
    assert budget.usage().spent_usd == Decimal("0.25")


def test_review11_the_pause_comes_from_the_days_spending_not_a_shards(
    config: Config, table: str
) -> None:
    """Shard 0 full of spending, the other shards full of reservations in flight: the day
    is held, not spent (a busy deferral, no pause). Once the reservations are settled at
    their worst case the day is spent: the deferral pauses until midnight."""
    clock, picks = Clock(), Picks()
    budget = budget_with(sharded(config, FOUR_SHARDS, daily_usd=Decimal(1)), table, clock, picks)
    picks.next = 0
    assert budget.settle(budget.reserve("spent", 25 * CENT), 25 * CENT)
    held = []
    for k in (1, 2, 3):
        picks.next = k
        held.append(budget.reserve(f"held{k}", 25 * CENT))
    for k in range(4):
        picks.next = k
        with pytest.raises(BudgetDeferred) as busy:
            budget.reserve(f"busy{k}", CENT)
        assert busy.value.until is None, f"a pause while reservations hold the room (shard {k})"
    for r in held:
        assert budget.settle(r, r.nanos)
    picks.next = 2
    with pytest.raises(BudgetDeferred) as spent:
        budget.reserve("spent-out", CENT)
    assert spent.value.until is not None


def test_review11_a_job_that_fits_the_shards_together_is_granted_across_budgets(
    config: Config, table: str
) -> None:
    """The room spread over four shards, a little on each ($0.04 left of every $0.25
    slice): a $0.15 job from a budget that never saw the day before is granted, once."""
    clock, picks = Clock(), Picks()
    cfg = sharded(config, FOUR_SHARDS, daily_usd=Decimal(1))
    budget = budget_with(cfg, table, clock, picks)
    for k in range(4):
        picks.next = k
        budget.reserve(f"fill{k}", 21 * CENT)
    other = make(cfg, table, clock, 7)
    big = other.reserve("big", 15 * CENT)
    day = utc_day(clock.now)
    shards = committed(other, [day_key(day, i) for i in range(4)])
    assert sum(shards) == 99 * CENT and shards[big.shard] <= share(USD, 4, big.shard)
