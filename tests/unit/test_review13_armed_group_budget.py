"""Review 13: a group of reservations written armed (``reserve_many(armed_for=flush)``).

What must still hold: a call that went out is never unarmed; a job that leaves unsent
keeping its reservation is neither booked as a dead call nor held off for
``worker.timeout_s``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import boto3
import pytest
from botocore.exceptions import ConnectionClosedError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatbatch.core.config import Config
from chatbatch.core.days import utc_day
from chatbatch.local.aws import create_resources, moto_in_process
from chatbatch.state.budget.budget import Budget
from chatbatch.state.budget.reservations import Ask
from tests.unit.test_budget import Clock

USD = 1_000_000_000  # nanos


@pytest.fixture
def table(config: Config) -> Iterator[str]:
    with moto_in_process():
        yield create_resources(config).table


class _ReplyLost:
    """A DynamoDB client whose first ``TransactWriteItems`` commits and then raises, as
    when the reply of a committed transaction is lost (a reset, a read timeout) and the
    retries run out: the caller cannot tell it committed."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.lost = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def transact_write_items(self, **kwargs: Any) -> Any:
        reply = self._client.transact_write_items(**kwargs)
        if self.lost == 0:
            self.lost += 1
            raise ConnectionClosedError(endpoint_url="https://dynamodb.local")
        return reply


def test_review13_a_group_whose_reply_was_lost_is_taken_back_unarmed(
    config: Config, table: str
) -> None:
    """``reserve_ahead`` treats a failed ``reserve_many`` as "nothing reserved" and each
    job reserves alone. If the group's transaction committed (its reply lost), each
    job finds its own reservation, same owner, and must take it back and call once, as it
    did when the group was written unarmed. Written armed, it is held off
    (``HeldElsewhere``) until ``worker.timeout_s`` after the group, then booked as a dead
    call at its worst case: never sent, over-booked."""
    clock = Clock()
    client = _ReplyLost(boto3.client("dynamodb"))
    budget = Budget(client, table, config, clock=clock)  # type: ignore[arg-type]
    asks = [Ask(f"b#{i}", USD // 100, owner=f"m{i}") for i in range(3)]
    with pytest.raises(ConnectionClosedError):
        budget.reserve_many(asks, armed_for="flush-1")
    assert client.lost == 1
    # the invocation goes on: each job reserves alone (``pipeline._reserve``)
    back = budget.reserve("b#0", USD // 100, owner="m0")  # HeldElsewhere at d51d689
    assert back.resumed and not back.armed, "its own reservation, its call never sent"
    assert back.flush is None, "no answer to look for"


def test_review13_group_reply_lost_is_harmless_unarmed(config: Config, table: str) -> None:
    """The same lost reply with the group written unarmed (as before d51d689, and as the
    hypothesis models still call it): the job takes its reservation back at once."""
    client = _ReplyLost(boto3.client("dynamodb"))
    budget = Budget(client, table, config, clock=Clock())  # type: ignore[arg-type]
    asks = [Ask(f"b#{i}", USD // 100, owner=f"m{i}") for i in range(3)]
    with pytest.raises(ConnectionClosedError):
        budget.reserve_many(asks)
    back = budget.reserve("b#0", USD // 100, owner="m0")
    assert back.resumed and not back.armed


_days = itertools.count(1)
# what each job of the group does: its call sent or not, then how it leaves
_fates = st.sampled_from(
    [
        "sent_settled",
        "sent_crashed",
        "sent_raised",
        "unsent_handed_back",
        "unsent_crashed",
        "unused",
    ]
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(fates=st.lists(_fates, min_size=2, max_size=6))
def test_review13_an_armed_group_books_every_sent_call_and_only_those_unsent_that_died(
    config: Config, table: str, fates: list[str]
) -> None:
    """A group made armed, each job meeting a drawn fate as the pipeline would treat it: a
    sent call (``arm``) is never unarmed, whatever ``disarm`` is tried after it (a raise
    after the call: ``process`` tries it); a job handed back unsent (``disarm``) is taken
    back at once by its next delivery and booked only at what its call costs; a worker
    that died leaves its jobs, sent or not, booked at the worst case by ``reclaim``;
    unused ones go back (``Finals.end``). Then nothing is reserved and the day's spent is
    exactly: the settled costs + the worst case of each job whose worker died or whose
    call went out unread, and never less than what went out (booked >= billed)."""
    clock = Clock(1_790_035_200.0 + 86_400 * next(_days) + 10)
    budget = Budget(boto3.client("dynamodb"), table, config, clock=clock)
    worst, actual = USD // 100, USD // 300
    asks = [Ask(f"p{clock.now}#{i}", worst, owner=f"m{i}") for i in range(len(fates))]
    held = budget.reserve_many(asks, armed_for="flush-1")
    assert len(held) == len(fates)
    spent, billed = 0, 0
    for ask, fate in zip(asks, fates, strict=True):
        r = held[ask.job_key]
        if fate.startswith("sent"):
            assert budget.arm(r)
            billed += actual
            assert not budget.disarm(r), "a call that went out is never unarmed"
        if fate == "sent_settled":
            assert budget.settle(r, actual)
            spent += actual
        elif fate in ("sent_crashed", "sent_raised", "unsent_crashed"):
            spent += worst  # reclaim books it (a raise after its call: redelivery or reclaim)
        elif fate == "unsent_handed_back":
            assert budget.disarm(r)
            back = budget.reserve(ask.job_key, worst, owner=ask.owner)  # no HeldElsewhere
            assert back.resumed and not back.armed and back.rid == r.rid
            assert budget.arm(back)
            billed += actual
            assert budget.settle(back, actual)
            spent += actual
        elif fate == "unused":
            assert budget.release(r)
    clock.now += config.budget.reservation_ttl_s + 1
    budget.reclaim(utc_day(clock.now - config.budget.reservation_ttl_s - 1))
    usage = budget.usage(utc_day(clock.now - config.budget.reservation_ttl_s - 1))
    assert usage.reserved_usd == 0, "nothing stays reserved"
    assert usage.spent_usd == Decimal(spent) / USD
    assert spent >= billed, "booked >= billed"
