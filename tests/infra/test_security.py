"""Issue 20: alarms reach the topic's subscribers, and the worker's role is pinned to what
its code calls (a broadening is a diff of this file)."""

from __future__ import annotations

from typing import Any

from synth_support import TABLE_POLICY, Synth, role_statements
from synth_support import logical_name as _name
from synth_support import render as _render

from chatbatch.core.config import Config

QUEUES = tuple(f"Queues{p}.Arn" for p in ("Critical", "High", "Low", "Normal"))
SECRETS = tuple(f"Secrets{p}" for p in ("Anthropic", "Deepseek", "Gemini", "Openai"))


def _objects(*prefixes: str) -> tuple[str, ...]:
    return tuple(f"StorageData.Arn/{p}/*" for p in prefixes)


# (sid, effect, actions, resources, condition): the worker role's whole policy.
WORKER_POLICY: set[tuple[str, str, tuple[str, ...], tuple[str, ...], str]] = {
    ("", "Allow", ("logs:CreateLogStream", "logs:PutLogEvents"), ("WorkerLogs.Arn",), ""),
    ("", "Allow", ("xray:PutTelemetryRecords", "xray:PutTraceSegments"), ("*",), ""),
    (
        "",
        "Allow",
        (
            "sqs:ChangeMessageVisibility",
            "sqs:DeleteMessage",
            "sqs:GetQueueAttributes",
            "sqs:GetQueueUrl",
            "sqs:ReceiveMessage",
            "sqs:SendMessage",
        ),
        QUEUES,
        "",
    ),
    ("BucketGetObject", "Allow", ("s3:GetObject",), _objects("cache", "claims", "results"), ""),
    (
        "BucketPutObject",
        "Allow",
        ("s3:PutObject",),
        _objects("cache", "costs", "errors", "refused", "requests", "results"),
        "",
    ),
    ("BucketListBucket", "Allow", ("s3:ListBucket",), ("StorageData.Arn",), ""),
    (
        "PutBatchCompletedEvents",
        "Allow",
        ("events:PutEvents",),
        ("arn:AWS::Partition:events:AWS::Region:AWS::AccountId:event-bus/default",),
        "{'StringEquals': {'events:source': 'chatbatch'}}",
    ),
    (
        "",
        "Allow",
        ("secretsmanager:DescribeSecret", "secretsmanager:GetSecretValue"),
        SECRETS,
        "",
    ),
    # the budget pause (infra/budget_pause.py): its own mappings only, and listing them
    (
        "SwitchOwnMappings",
        "Allow",
        ("lambda:UpdateEventSourceMapping",),
        ("arn:AWS::Partition:lambda:AWS::Region:AWS::AccountId:event-source-mapping:*",),
        "{'ArnEquals': {'lambda:FunctionArn': 'WorkerFunction.Arn'}}",
    ),
    ("ListMappings", "Allow", ("lambda:ListEventSourceMappings",), ("*",), ""),
} | TABLE_POLICY


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _statements(document: dict[str, Any]) -> list[dict[str, Any]]:
    return list(document["Statement"])


def _condition(value: Any) -> Any:
    """A condition with its references rendered (``WorkerFunction.Arn``)."""
    if isinstance(value, dict):
        if value.keys() & {"Ref", "Fn::GetAtt", "Fn::Join"}:
            return _render(value)
        return {k: _condition(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_condition(v) for v in value]
    return value


def _worker_statements(synth: Synth) -> list[dict[str, Any]]:
    """Every statement of the IAM policies on the worker's role. The stack's other role,
    the gatherer's, is pinned in test_stack_batch_route; no policy is on two roles."""
    policies = list(synth.resources("AWS::IAM::Policy").values())
    roles = [str(r) for p in policies for r in p["Properties"]["Roles"]]
    assert len(roles) == len(policies)
    assert {_name(r["Ref"]) for p in policies for r in p["Properties"]["Roles"]} == {
        "WorkerRole",
        "BatchRouteRole",
    }
    return role_statements(synth)


def test_worker_policy_is_exactly_what_its_code_calls(synth: Synth) -> None:
    seen = {
        (
            s.get("Sid", ""),
            s["Effect"],
            tuple(sorted(_listed(s["Action"]))),
            tuple(sorted(_render(r) for r in _listed(s["Resource"]))),
            str(_condition(s["Condition"])) if "Condition" in s else "",
        )
        for s in _worker_statements(synth)
    }
    assert seen == WORKER_POLICY


def test_worker_cannot_scan_or_write_the_limit_override(synth: Synth) -> None:
    statements = _worker_statements(synth)
    allowed = {a for s in statements if s["Effect"] == "Allow" for a in _listed(s["Action"])}
    unused = {
        "dynamodb:Scan",
        "dynamodb:BatchWriteItem",
        "dynamodb:DescribeTable",
        "dynamodb:GetRecords",
        "dynamodb:GetShardIterator",
        "dynamodb:ConditionCheckItem",
        "s3:DeleteObject",
    }
    assert not allowed & unused
    (deny,) = (s for s in statements if s["Effect"] == "Deny")
    # Every item write the role is allowed (a transaction's items are authorised as these).
    item_writes = {"dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem"}
    assert set(deny["Action"]) == allowed & item_writes == item_writes
    assert deny["Condition"] == {
        "ForAnyValue:StringEquals": {"dynamodb:LeadingKeys": ["budget#limits"]}
    }
    for s in statements:  # never the whole bucket's objects
        assert not [r for r in _listed(s["Resource"]) if _render(r).endswith(".Arn/*")]


def test_alarm_topic_lets_this_stacks_alarms_publish_over_tls_only(
    synth: Synth, config: Config
) -> None:
    (topic_id,) = synth.resources("AWS::SNS::Topic")
    (policy,) = synth.resources("AWS::SNS::TopicPolicy").values()
    assert policy["Properties"]["Topics"] == [{"Ref": topic_id}]
    statements = _statements(policy["Properties"]["PolicyDocument"])
    (deny,) = (s for s in statements if s["Effect"] == "Deny")
    assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert deny["Principal"] in ("*", {"AWS": "*"})
    (allow,) = (s for s in statements if s["Effect"] == "Allow")
    assert allow["Principal"] == {"Service": "cloudwatch.amazonaws.com"}
    assert allow["Action"] == "sns:Publish"
    assert allow["Resource"] == {"Ref": topic_id}
    condition = allow["Condition"]
    assert condition["StringEquals"] == {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}
    assert _render(condition["ArnLike"]["aws:SourceArn"]) == (
        f"arn:AWS::Partition:cloudwatch:AWS::Region:AWS::AccountId:alarm:{config.stack_name}-*"
    )
    alarms = synth.resources("AWS::CloudWatch::Alarm").values()
    assert all(a["Properties"]["AlarmName"].startswith(f"{config.stack_name}-") for a in alarms)


def test_only_named_producers_and_the_worker_may_send_to_any_queue(synth: Synth) -> None:
    """Issue 20 item 3: each queue and DLQ denies SendMessage to every principal but the
    producers (``deployer`` resolved from the assumed role to its role, at any path), the
    worker's role and the gatherer's (issue 17: it sends jobs back to the synchronous
    path), next to its TLS-only Deny; nothing else is in the policy. The batch route's
    queue and DLQ too."""
    queues = synth.resources("AWS::SQS::Queue")
    policies = synth.resources("AWS::SQS::QueuePolicy").values()
    covered = [_name(q["Ref"]) for p in policies for q in p["Properties"]["Queues"]]
    assert sorted(covered) == sorted(_name(q) for q in queues)  # all 10, DLQs included
    assert len(covered) == 10
    (role_id,) = [k for k in synth.resources("AWS::IAM::Role") if k.startswith("WorkerRole")]
    (gatherer_id,) = [k for k in synth.resources("AWS::IAM::Role") if "BatchRouteRole" in k]
    for policy in policies:
        (queue,) = policy["Properties"]["Queues"]
        statements = {
            s.get("Sid", ""): s for s in _statements(policy["Properties"]["PolicyDocument"])
        }
        tls = next(s for s in statements.values() if "aws:SecureTransport" in str(s["Condition"]))
        assert tls["Effect"] == "Deny"
        only = statements["OnlyNamedProducersSend"]
        assert len(statements) == 2
        assert (only["Effect"], only["Action"]) == ("Deny", "sqs:SendMessage")
        assert only["Principal"] in ("*", {"AWS": "*"})
        assert _render(only["Resource"]) == f"{_name(queue['Ref'])}.Arn"
        senders = [_render(v) for v in only["Condition"]["ArnNotLike"]["aws:PrincipalArn"]]
        assert senders == [
            "arn:aws:iam::123456789012:role/Deployer",
            "arn:aws:iam::123456789012:role/*/Deployer",
            f"{_name(role_id)}.Arn",
            f"{_name(gatherer_id)}.Arn",
        ]
