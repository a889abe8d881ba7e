"""A part's money closed by a gatherer that dies between any two of ``close_part``'s
writes (issue 17's crash tests): the next run finds what is left from the part's record
(``part_held``) and closes it, so nothing stays reserved and no open marker is left
behind (a part's group marker, reclaimable only ``PART_HOLD_S`` on, would otherwise stay
for good: nothing else ever closes it)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import boto3
import pytest

from chatbatch.core.config import Config
from chatbatch.local.aws import create_resources, moto_in_process
from chatbatch.state.budget.budget import Budget
from chatbatch.state.budget.parts import part_ask
from chatbatch.worker.crash import WorkerCrash
from tests.unit.test_budget import with_budget
from tests.unit.test_part_money import CLOCK, USD, ingest, ledger

BATCHES = ("b1", "b2", "b3")
WRITES = frozenset({"transact_write_items", "delete_item", "put_item", "update_item"})
_parts = itertools.count()


class Dying:
    """A DynamoDB client that dies (``WorkerCrash``) at its ``writes + 1``-th write: the
    Lambda timed out there, the earlier writes made, that one not."""

    def __init__(self, client: Any, writes: int) -> None:
        self._client = client
        self.left = writes

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._client, name)
        if name not in WRITES:
            return method

        def write(**kwargs: Any) -> Any:
            if self.left == 0:
                raise WorkerCrash(f"died before {name}")
            self.left -= 1
            return method(**kwargs)

        return write


@pytest.fixture
def table(config: Config) -> Iterator[str]:
    with moto_in_process():
        yield create_resources(config).table


def open_markers(table: str) -> list[dict[str, Any]]:
    items = boto3.client("dynamodb").scan(TableName=table)["Items"]
    return [i for i in items if i["pk"]["S"].startswith("budget#open#")]


def test_a_close_killed_after_any_write_is_finished_by_the_next_run(
    table: str, config: Config
) -> None:
    limited = with_budget(config, daily_usd=Decimal(100))
    writes = 0
    while True:
        part = f"p{next(_parts)}"
        budget = Budget(boto3.client("dynamodb"), table, limited, clock=CLOCK)
        held = budget.reserve_part([part_ask(part, b, 10 * USD // 100) for b in BATCHES])
        assert ingest(budget, held["b1"], 2 * USD // 100, 5 * USD // 100)
        spent = ledger(budget)[1]
        dying = Budget(Dying(boto3.client("dynamodb"), writes), table, limited, clock=CLOCK)
        try:
            dying.close_part(dying.part_held(part, BATCHES).values())
        except WorkerCrash:
            died = True
        else:
            died = False
        # the next run: what is left of the part's money, from its record's batches
        assert budget.close_part(budget.part_held(part, BATCHES).values())
        assert budget.part_held(part, BATCHES) == {}, f"died after {writes} writes"
        assert open_markers(table) == [], f"died after {writes} writes"
        assert ledger(budget) == (spent, spent), "only what was spent stays committed"
        if not died:
            break
        writes += 1
    assert writes >= len(BATCHES), "every write of the close was a place to die"
