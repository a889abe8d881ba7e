"""The queue switch and the budget pause item: the deployed switch drives Lambda's event
source mappings through the real API (moto's Lambda), the local one an item; the pause is
opened once (``since`` kept) and lifted with the switch turned back on."""

from __future__ import annotations

import io
import json
import zipfile

import boto3
import pytest

from chatbatch.state.budget.pause import BudgetPause
from chatbatch.state.queue_switch import LambdaMappings, TableSwitch, queue_switch
from tests.unit.conftest import REGION, Dynamo

FUNCTION = "chatbatch-worker"


def _mappings(queues: int) -> LambdaMappings:
    """A function with ``queues`` SQS event source mappings in moto, and one other
    function's mapping the switch must leave alone."""
    iam = boto3.client("iam", region_name=REGION)
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "lambda.amazonaws.com"},
                "Action": "sts:AssumeRole",
            }
        ],
    }
    role = iam.create_role(RoleName="worker", AssumeRolePolicyDocument=json.dumps(trust))
    code = io.BytesIO()
    with zipfile.ZipFile(code, "w") as z:
        z.writestr("handler.py", "def handler(event, context):\n    return {}\n")
    client = boto3.client("lambda", region_name=REGION)
    sqs = boto3.client("sqs", region_name=REGION)
    for name, count in ((FUNCTION, queues), ("other", 1)):
        client.create_function(
            FunctionName=name,
            Runtime="python3.12",
            Role=role["Role"]["Arn"],
            Handler="handler.handler",
            Code={"ZipFile": code.getvalue()},
        )
        for i in range(count):
            url = sqs.create_queue(QueueName=f"{name}-{i}")["QueueUrl"]
            arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
            client.create_event_source_mapping(
                EventSourceArn=arn["Attributes"]["QueueArn"], FunctionName=name
            )
    return LambdaMappings(client, FUNCTION)


def _states(function: str) -> list[str]:
    client = boto3.client("lambda", region_name=REGION)
    reply = client.list_event_source_mappings(FunctionName=function)
    return [m["State"] for m in reply["EventSourceMappings"]]


def test_lambda_mappings_are_switched_off_and_on_once(dynamo: Dynamo) -> None:
    switch = _mappings(4)
    assert switch.enabled()
    assert switch.set_enabled(False) == 4
    assert _states(FUNCTION) == ["Disabled"] * 4 and not switch.enabled()
    assert switch.set_enabled(False) == 0, "already off: no update"
    assert _states("other") == ["Enabled"], "another function's mapping is left alone"
    assert switch.set_enabled(True) == 4 and _states(FUNCTION) == ["Enabled"] * 4


def test_the_pause_is_opened_once_and_lifted_with_the_switch_on(dynamo: Dynamo) -> None:
    now = [1000.0]
    pause = BudgetPause(dynamo.client, dynamo.table, clock=lambda: now[0], cache_s=0)
    switch = TableSwitch(dynamo.client, dynamo.table, clock=lambda: now[0])
    assert switch.enabled() and pause.get() is None
    first = pause.open("daily budget $1 reached", until=2000.0, limit_nanos=10**9)
    assert switch.set_enabled(False) == 1 and not switch.enabled()
    now[0] += 30
    again = pause.open("daily budget $1 reached", until=2000.0, limit_nanos=10**9)
    assert again.since == first.since == 1000.0 and again.limit_nanos == 10**9
    assert not again.due(1999.0) and again.due(2000.0)
    assert pause.lift(switch) == again
    assert pause.get() is None and switch.enabled()
    assert pause.lift(switch) is None, "nothing to lift"


def test_a_switch_spec_it_does_not_know_is_refused(dynamo: Dynamo) -> None:
    def no_lambda() -> object:
        raise AssertionError("not asked for")

    assert isinstance(queue_switch(dynamo.client, dynamo.table, no_lambda, "table"), TableSwitch)
    env = {"AWS_LAMBDA_FUNCTION_NAME": FUNCTION}
    made = queue_switch(dynamo.client, dynamo.table, lambda: None, environ=env)
    assert isinstance(made, LambdaMappings) and made.function == FUNCTION
    for spec in ("lambda:", "sqs:queue"):
        with pytest.raises(ValueError, match="expected 'table' or 'lambda:FUNCTION'"):
            queue_switch(dynamo.client, dynamo.table, no_lambda, spec)
