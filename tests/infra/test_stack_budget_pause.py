"""The budget pause's deployed parts, from the synthesized template: the worker may switch
only its own event source mappings, and an hourly EventBridge schedule invokes it with
the resume event."""

from __future__ import annotations

import json
from typing import Any

from synth_support import Synth, function

from chatbatch.core.resources import RESUME_EVENT


def _worker_id(synth: Synth) -> str:
    function_id, _ = function(synth)
    return function_id


def _statements(synth: Synth) -> list[dict[str, Any]]:
    return [
        statement
        for policy in synth.resources("AWS::IAM::Policy").values()
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]
    ]


def test_the_worker_may_switch_only_its_own_mappings(synth: Synth) -> None:
    worker = _worker_id(synth)
    statements = _statements(synth)
    updates = [s for s in statements if "lambda:UpdateEventSourceMapping" in str(s["Action"])]
    assert len(updates) == 1
    [update] = updates
    assert update["Action"] == "lambda:UpdateEventSourceMapping"
    assert update["Condition"] == {
        "ArnEquals": {"lambda:FunctionArn": {"Fn::GetAtt": [worker, "Arn"]}}
    }
    assert "event-source-mapping:*" in str(update["Resource"])
    [listing] = [s for s in statements if "lambda:ListEventSourceMappings" in str(s["Action"])]
    assert listing["Action"] == "lambda:ListEventSourceMappings"
    # nothing else of Lambda's control plane
    lambda_actions = {
        action
        for s in statements
        for action in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
        if action.startswith("lambda:")
    }
    assert lambda_actions == {"lambda:UpdateEventSourceMapping", "lambda:ListEventSourceMappings"}


def test_an_hourly_schedule_invokes_the_worker_with_the_resume_event(synth: Synth) -> None:
    worker = _worker_id(synth)
    [rule] = [  # the gatherer's schedule is test_stack_batch_route's
        r for lid, r in synth.resources("AWS::Events::Rule").items() if "ResumeSchedule" in lid
    ]
    props = rule["Properties"]
    assert props["ScheduleExpression"] == "cron(0 * * * ? *)"
    assert props["State"] == "ENABLED"
    [target] = props["Targets"]
    assert target["Arn"] == {"Fn::GetAtt": [worker, "Arn"]}

    assert json.loads(target["Input"]) == RESUME_EVENT
    permissions = synth.resources("AWS::Lambda::Permission").values()
    assert any(
        p["Properties"]["Principal"] == "events.amazonaws.com"
        and p["Properties"]["FunctionName"] == {"Fn::GetAtt": [worker, "Arn"]}
        for p in permissions
    )
