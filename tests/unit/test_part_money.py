"""A provider batch's money (``Budget.reserve_part``, ``state/budget/parts.py``): reserved
once per batch of the part, never reclaimed by the workers, settled chunk by chunk, its
remainder given back once; against a model of the ledger for random chunks."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from decimal import Decimal

import boto3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatbatch.core.config import Config
from chatbatch.core.days import utc_day
from chatbatch.local.aws import create_resources, moto_in_process
from chatbatch.state.budget.budget import Budget
from chatbatch.state.budget.errors import BudgetDeferred
from chatbatch.state.budget.parts import part_ask
from chatbatch.state.budget.reservations import Reservation
from chatbatch.state.ddb import transact
from tests.unit.test_budget import Clock, with_budget

USD = 1_000_000_000
_parts = itertools.count()


CLOCK = Clock()  # every budget here: a test that moves it moves it back


@pytest.fixture
def budget(config: Config) -> Iterator[Budget]:
    with moto_in_process():
        table = create_resources(config).table
        limited = with_budget(config, daily_usd=Decimal(100))
        yield Budget(boto3.client("dynamodb"), table, limited, clock=CLOCK)


def ledger(budget: Budget) -> tuple[int, int]:
    """The day's (committed, spent) in nanos."""
    usage = budget.usage(utc_day(CLOCK()))
    spent = int(usage.spent_usd * USD)
    return spent + int(usage.reserved_usd * USD), spent


def ingest(budget: Budget, r: Reservation, actual: int, worst: int) -> bool:
    """One ingested chunk of ``r``'s jobs, committed alone (the gatherer commits it with
    the jobs' final states)."""
    own, additions = budget.ingest_parts(r, actual, worst)
    return not transact(boto3.client("dynamodb"), [*own, *budget.ledger_items(additions)])


def test_a_part_reserves_per_batch_settles_by_chunk_and_gives_back_the_rest(
    budget: Budget,
) -> None:
    part = f"p{next(_parts)}"
    held = budget.reserve_part(
        [part_ask(part, "b1", 30 * USD // 100), part_ask(part, "b2", 20 * USD // 100)]
    )
    assert set(held) == {"b1", "b2"}
    assert ledger(budget) == (50 * USD // 100, 0)
    CLOCK.now += 3 * 86_400
    try:
        assert budget.reclaim() == 0, "a part's reservation is the gatherer's to close"
    finally:
        CLOCK.now -= 3 * 86_400
    # two chunks of b1: worst 10 and 15 cents, cost 4 and 6
    assert ingest(budget, held["b1"], 4 * USD // 100, 10 * USD // 100)
    assert ingest(budget, held["b1"], 6 * USD // 100, 15 * USD // 100)
    assert ledger(budget) == (35 * USD // 100, 10 * USD // 100)
    # a chunk worth more than the reservation still holds (5 cents): refused, nothing moves
    assert not ingest(budget, held["b1"], 1, 6 * USD // 100)
    assert budget.close_part(held.values())
    assert ledger(budget) == (10 * USD // 100, 10 * USD // 100), "only what was spent"
    assert budget.close_part(held.values()), "closed twice: nothing more given back"
    assert ledger(budget) == (10 * USD // 100, 10 * USD // 100)
    assert not ingest(budget, held["b2"], 1, 1), "a closed part books nothing more"


def test_a_part_that_does_not_fit_reserves_nothing(budget: Budget) -> None:
    part = f"p{next(_parts)}"
    with pytest.raises(BudgetDeferred):
        budget.reserve_part([part_ask(part, "b1", 60 * USD), part_ask(part, "b2", 50 * USD)])
    assert ledger(budget) == (0, 0)
    limited = part_ask(part, "b3", 2 * USD, batch_limit_nanos=USD)
    with pytest.raises(BudgetDeferred) as refused:
        budget.reserve_part([limited])
    assert refused.value.scope == "batch"
    assert ledger(budget) == (0, 0)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    chunks=st.lists(
        st.tuples(st.sampled_from(["a", "b"]), st.integers(1, 40), st.integers(0, 100)),
        max_size=8,
    )
)
def test_chunks_against_a_model_of_the_ledger(
    budget: Budget, chunks: list[tuple[str, int, int]]
) -> None:
    """Random chunks (batch, worst case, percent of it really spent): each one fits what
    its reservation still holds or is refused whole; closing leaves the ledger at exactly
    what the accepted chunks spent, never below, never twice."""
    part = f"p{next(_parts)}"
    before = ledger(budget)
    reserved = {"a": 100 * USD // 1000, "b": 60 * USD // 1000}
    held = budget.reserve_part([part_ask(part, b, nanos) for b, nanos in reserved.items()])
    holds, spent = dict(reserved), 0
    for batch, worst_milli, percent in chunks:
        worst = worst_milli * USD // 1000
        actual = worst * percent // 100
        fits = worst <= holds[batch]
        assert ingest(budget, held[batch], actual, worst) == fits
        if fits:
            holds[batch] -= worst
            spent += actual
        committed, booked = ledger(budget)
        assert booked - before[1] == spent
        assert committed - before[0] == spent + sum(holds.values())
    assert budget.close_part(held.values())
    committed, booked = ledger(budget)
    assert (committed - before[0], booked - before[1]) == (spent, spent)


def test_a_part_of_more_batches_than_one_transaction_holds_is_refused(budget: Budget) -> None:
    part = f"p{next(_parts)}"
    asks = [part_ask(part, f"b{i}", 1) for i in range(99)]  # + marker + day ledger: 101
    with pytest.raises(ValueError, match="99 batches"):
        budget.reserve_part(asks)
    assert ledger(budget) == (0, 0)
    assert set(budget.reserve_part(asks[:98])) == {f"b{i}" for i in range(98)}
