"""The budget pause and the queue switch never leave the consumers off with no pause open,
against moto's Lambda and table: a lift turns the switch on before it deletes the pause
(a switch that fails leaves the pause for the next lift); ``budget set`` turns the switch
on whenever the new limit leaves room, pause or not, and waits out a mapping in
transition; a worker whose pause was lifted while it switched off turns the switch back
on; a refusal whose midnight has passed opens no pause."""

from __future__ import annotations

from decimal import Decimal
from types import SimpleNamespace
from typing import Any, cast

import boto3
import pytest
from botocore.exceptions import ClientError

from chatbatch.client.budget import set_daily_limit
from chatbatch.client.deployment import Deployment
from chatbatch.core.config import load_config
from chatbatch.core.days import next_midnight
from chatbatch.state.budget.budget import Budget
from chatbatch.state.budget.errors import deferral
from chatbatch.state.budget.pause import BudgetPause
from chatbatch.state.queue_switch import IN_USE_TRIES, IN_USE_WAIT_S, LambdaMappings, TableSwitch
from chatbatch.worker.budget_pause import pause_queues
from chatbatch.worker.services import Services
from tests.unit.conftest import REGION, Dynamo
from tests.unit.test_queue_switch import FUNCTION, _mappings, _states

MIDNIGHT = next_midnight(1.8e9).timestamp()


class InTransition:
    """moto's Lambda client, with each mapping refusing its first ``busy`` updates as a
    mapping still ``Disabling`` or ``Enabling`` does."""

    def __init__(self, busy: int) -> None:
        self._client = boto3.client("lambda", region_name=REGION)
        self._busy = busy
        self.refused: dict[str, int] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def update_event_source_mapping(self, **kwargs: Any) -> Any:
        uuid = kwargs["UUID"]
        if self.refused.get(uuid, 0) < self._busy:
            self.refused[uuid] = self.refused.get(uuid, 0) + 1
            error = {"Error": {"Code": "ResourceInUseException", "Message": "in transition"}}
            raise ClientError(error, "UpdateEventSourceMapping")  # type: ignore[arg-type]
        return self._client.update_event_source_mapping(**kwargs)


def _switch(busy: int, waits: list[float]) -> LambdaMappings:
    return LambdaMappings(InTransition(busy), FUNCTION, sleep=waits.append)


def _deployment(dynamo: Dynamo, switch: Any) -> Deployment:
    budget = Budget(dynamo.client, dynamo.table, load_config(None))
    pause = BudgetPause(dynamo.client, dynamo.table, cache_s=0)
    return cast(Deployment, SimpleNamespace(budget=budget, pause=pause, switch=switch))


def test_a_mapping_in_transition_is_tried_again_then_reported(dynamo: Dynamo) -> None:
    _mappings(3)
    waits: list[float] = []
    assert _switch(1, waits).set_enabled(False) == 3
    assert _states(FUNCTION) == ["Disabled"] * 3 and waits == [IN_USE_WAIT_S]
    waits.clear()
    with pytest.raises(ClientError, match="ResourceInUseException"):
        _switch(IN_USE_TRIES, waits).set_enabled(True)
    assert len(waits) == IN_USE_TRIES - 1 and _states(FUNCTION) == ["Disabled"] * 3


def test_a_lift_whose_switch_fails_leaves_the_pause_for_budget_set_to_retry(
    dynamo: Dynamo,
) -> None:
    _mappings(2).set_enabled(False)
    stuck = _deployment(dynamo, _switch(IN_USE_TRIES, []))
    stuck.pause.open("daily budget $10 reached", until=MIDNIGHT, limit_nanos=10**10)
    with pytest.raises(ClientError, match="ResourceInUseException"):
        set_daily_limit(stuck, Decimal(500))
    assert stuck.pause.get() is not None, "still paused: the consumers are still off"
    view = set_daily_limit(_deployment(dynamo, _switch(1, [])), Decimal(500))
    assert view.resumed and view.pause is None
    assert stuck.pause.get() is None and _states(FUNCTION) == ["Enabled"] * 2


def test_budget_set_turns_on_consumers_left_off_with_no_pause_open(dynamo: Dynamo) -> None:
    switch = TableSwitch(dynamo.client, dynamo.table)
    switch.set_enabled(False)
    deployment = _deployment(dynamo, switch)
    view = set_daily_limit(deployment, Decimal(900))
    assert view.resumed and switch.enabled()
    assert not set_daily_limit(deployment, Decimal(900)).resumed, "nothing left to resume"


class LiftedMeanwhile(TableSwitch):
    """A switch whose turning off comes just after ``budget set`` lifted the pause."""

    def __init__(self, dynamo: Dynamo, deployment: Deployment) -> None:
        super().__init__(dynamo.client, dynamo.table)
        self._deployment = deployment

    def set_enabled(self, enabled: bool) -> int:
        if not enabled:
            set_daily_limit(self._deployment, Decimal(900))
        return super().set_enabled(enabled)


def _services(dynamo: Dynamo, switch: TableSwitch, now: float) -> Services:
    config = load_config(None)
    budget = Budget(dynamo.client, dynamo.table, config, clock=lambda: now)
    pause = BudgetPause(dynamo.client, dynamo.table, clock=lambda: now, cache_s=0)
    fields = {"budget": budget, "pause": pause, "switch": switch, "paused_since": None}
    return cast(Services, SimpleNamespace(**fields))


def test_a_pause_lifted_while_the_worker_switches_off_turns_the_switch_back_on(
    dynamo: Dynamo,
) -> None:
    switch = LiftedMeanwhile(dynamo, _deployment(dynamo, TableSwitch(dynamo.client, dynamo.table)))
    services = _services(dynamo, switch, MIDNIGHT - 60)
    limit = services.budget.daily_limit_nanos()
    pause_queues(services, deferral("day", None, "d", limit, over=True, now=MIDNIGHT - 60))
    assert services.pause.get() is None and services.paused_since is None
    assert TableSwitch(dynamo.client, dynamo.table).enabled()


def test_a_refusal_from_before_midnight_opens_no_pause_after_it(dynamo: Dynamo) -> None:
    switch = TableSwitch(dynamo.client, dynamo.table)
    services = _services(dynamo, switch, MIDNIGHT + 0.2)
    limit = services.budget.daily_limit_nanos()
    refused = deferral("day", None, "d", limit, over=True, now=MIDNIGHT - 0.1)
    pause_queues(services, refused)
    assert services.pause.get() is None and switch.enabled()
