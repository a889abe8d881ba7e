"""The batch route's deployed parts (issue 17), from the synthesized template: its queue
and DLQ, the gatherer (the worker's asset and environment, one run at a time), its role
pinned to what the gatherer's code calls, its schedule, alarms, widgets and outputs."""

from __future__ import annotations

import json
from typing import Any

from synth_support import TABLE_POLICY, Synth, function, role_statements
from synth_support import logical_name as _name
from synth_support import render as _render

from chatbatch.core.config import Config
from chatbatch.core.metrics import METRICS, Metric
from chatbatch.core.resources import (
    BATCH_MAX_RECEIVES,
    ENV_BATCH_QUEUE,
    ENV_TRUSTED_SENDERS,
    GATHER_EVENT,
    GATHER_EVERY_MIN,
    GATHER_TIMEOUT_S,
    batch_queue_name,
)
from infra import outputs

PRIORITY_QUEUES = tuple(f"Queues{p}.Arn" for p in ("Critical", "High", "Low", "Normal"))
SECRETS = tuple(f"Secrets{p}" for p in ("Anthropic", "Deepseek", "Gemini", "Openai"))


def _objects(*prefixes: str) -> tuple[str, ...]:
    return tuple(f"StorageData.Arn/{p}/*" for p in prefixes)


# (sid, effect, actions, resources, condition): the gatherer role's whole policy.
GATHERER_POLICY: set[tuple[str, str, tuple[str, ...], tuple[str, ...], str]] = {
    ("", "Allow", ("logs:CreateLogStream", "logs:PutLogEvents"), ("BatchRouteLogs.Arn",), ""),
    ("", "Allow", ("xray:PutTelemetryRecords", "xray:PutTraceSegments"), ("*",), ""),
    (
        "",
        "Allow",
        (
            "sqs:ChangeMessageVisibility",
            "sqs:DeleteMessage",
            "sqs:GetQueueAttributes",
            "sqs:ReceiveMessage",
            "sqs:SendMessage",
        ),
        ("BatchRouteQueue.Arn",),
        "",
    ),
    (
        "",
        "Allow",
        ("sqs:GetQueueAttributes", "sqs:GetQueueUrl", "sqs:SendMessage"),
        PRIORITY_QUEUES,
        "",
    ),
    ("BucketGetObject", "Allow", ("s3:GetObject",), _objects("claims", "parts", "results"), ""),
    (
        "BucketPutObject",
        "Allow",
        ("s3:PutObject",),
        _objects("claims", "costs", "errors", "parts", "refused", "requests", "results"),
        "",
    ),
    ("BucketListBucket", "Allow", ("s3:ListBucket",), ("StorageData.Arn",), ""),
    (
        "",
        "Allow",
        ("secretsmanager:DescribeSecret", "secretsmanager:GetSecretValue"),
        SECRETS,
        "",
    ),
    (
        "PutBatchCompletedEvents",
        "Allow",
        ("events:PutEvents",),
        ("arn:AWS::Partition:events:AWS::Region:AWS::AccountId:event-bus/default",),
        "{'StringEquals': {'events:source': 'chatbatch'}}",
    ),
} | TABLE_POLICY


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _queues(synth: Synth) -> dict[str, tuple[str, dict[str, Any]]]:
    """Queue name -> (logical id, properties)."""
    return {
        r["Properties"]["QueueName"]: (lid, r["Properties"])
        for lid, r in synth.resources("AWS::SQS::Queue").items()
    }


def _gatherer(synth: Synth) -> tuple[str, dict[str, Any]]:
    lid, resource = function(synth, "BatchRoute")
    return lid, resource["Properties"]


def test_the_batch_queue_and_its_dlq(synth: Synth, config: Config) -> None:
    queues = _queues(synth)
    queue_id, queue = queues[batch_queue_name(config.stack_name)]
    dlq_id, dlq = queues[batch_queue_name(config.stack_name, dlq=True)]
    # only runs that died holding a message count toward the DLQ: many may (see
    # BATCH_MAX_RECEIVES), where a priority queue's max_receive_count is a job's tries
    assert queue["RedrivePolicy"] == {
        "deadLetterTargetArn": {"Fn::GetAtt": [dlq_id, "Arn"]},
        "maxReceiveCount": BATCH_MAX_RECEIVES,
    }
    # a run's messages stay hidden for the whole run
    assert queue["VisibilityTimeout"] == GATHER_TIMEOUT_S + 60
    assert queue["MessageRetentionPeriod"] == config.worker.retention_days * 86_400
    assert dlq["MessageRetentionPeriod"] == 14 * 86_400
    assert queue["SqsManagedSseEnabled"] is True and dlq["SqsManagedSseEnabled"] is True
    policies = {
        _render(q): p["Properties"]["PolicyDocument"]["Statement"]
        for p in synth.resources("AWS::SQS::QueuePolicy").values()
        for q in p["Properties"]["Queues"]
    }
    for lid in (queue_id, dlq_id):
        tls = [s for s in policies[_name(lid)] if "aws:SecureTransport" in json.dumps(s)]
        assert [s["Effect"] for s in tls] == ["Deny"]
    # no event source mapping reads it: only the gatherer receives from it
    sources = {
        m["Properties"]["EventSourceArn"]["Fn::GetAtt"][0]
        for m in synth.resources("AWS::Lambda::EventSourceMapping").values()
    }
    assert len(sources) == 4 and not sources & {queue_id, dlq_id}


def test_the_gatherer_runs_the_workers_code_one_run_at_a_time(synth: Synth, config: Config) -> None:
    _, props = _gatherer(synth)
    _, worker = function(synth)
    assert props["Handler"] == "chatbatch.batchroute.handler.handler"
    assert props["Timeout"] == GATHER_TIMEOUT_S == 900
    assert props["MemorySize"] == 3008
    assert props["ReservedConcurrentExecutions"] == 1
    assert props["TracingConfig"] == {"Mode": "Active"}
    for same in ("Code", "Runtime", "Architectures"):
        assert props[same] == worker["Properties"][same], same
    env = props["Environment"]["Variables"]
    worker_env = worker["Properties"]["Environment"]["Variables"]
    queue_id, _ = _queues(synth)[batch_queue_name(config.stack_name)]
    # the worker takes the gatherer's messages (jobs sent back to sync) as its own
    trusted = worker_env.pop(ENV_TRUSTED_SENDERS)
    (role_id,) = (
        lid for lid in synth.resources("AWS::IAM::Role") if _name(lid) == "BatchRouteRole"
    )
    assert trusted == {"Fn::GetAtt": [role_id, "RoleId"]}
    assert env == {**worker_env, ENV_BATCH_QUEUE: {"Ref": queue_id}}
    assert ENV_BATCH_QUEUE not in worker_env
    # its own log group, as the worker has
    assert _render(props["LoggingConfig"]["LogGroup"]) == "BatchRouteLogs"


def test_a_scheduled_event_is_not_retried_or_kept_past_the_next_one(synth: Synth) -> None:
    gatherer_id, _ = _gatherer(synth)
    (config,) = (
        c["Properties"]
        for c in synth.resources("AWS::Lambda::EventInvokeConfig").values()
        if c["Properties"]["FunctionName"] == {"Ref": gatherer_id}
    )
    assert config["MaximumRetryAttempts"] == 0
    assert config["MaximumEventAgeInSeconds"] == GATHER_EVERY_MIN * 60


def test_the_schedule_sends_the_gather_event_every_few_minutes(synth: Synth) -> None:
    gatherer_id, _ = _gatherer(synth)
    arn = {"Fn::GetAtt": [gatherer_id, "Arn"]}
    rules = [
        r["Properties"]
        for r in synth.resources("AWS::Events::Rule").values()
        if any(t["Arn"] == arn for t in r["Properties"].get("Targets", []))
    ]
    assert len(rules) == 1
    (rule,) = rules
    assert rule["ScheduleExpression"] == f"rate({GATHER_EVERY_MIN} minutes)"
    assert rule["State"] == "ENABLED"
    (target,) = rule["Targets"]
    assert json.loads(target["Input"]) == GATHER_EVENT
    assert any(
        p["Properties"]["Principal"] == "events.amazonaws.com"
        and p["Properties"]["FunctionName"] == arn
        for p in synth.resources("AWS::Lambda::Permission").values()
    )


def test_the_gatherer_role_is_exactly_what_its_code_calls(synth: Synth) -> None:
    statements = role_statements(synth, "BatchRoute")
    seen = {
        (
            s.get("Sid", ""),
            s["Effect"],
            tuple(sorted(_listed(s["Action"]))),
            tuple(sorted(_render(r) for r in _listed(s["Resource"]))),
            str(s["Condition"]) if "Condition" in s else "",
        )
        for s in statements
    }
    assert seen == GATHERER_POLICY
    allowed = {a for s in statements if s["Effect"] == "Allow" for a in _listed(s["Action"])}
    # EMF metrics go out in its logs; it sends to the priority queues (jobs back to sync)
    # and to the batch queue (a job waiting for budget, again), never reads a DLQ
    assert not [a for a in allowed if a.startswith("cloudwatch:")]
    sends = [s for s in statements if "sqs:SendMessage" in _listed(s["Action"])]
    sent_to = {_render(r) for s in sends for r in _listed(s["Resource"])}
    assert sent_to == {*PRIORITY_QUEUES, "BatchRouteQueue.Arn"}
    (role,) = (r for lid, r in synth.resources("AWS::IAM::Role").items() if "BatchRoute" in lid)
    assert "ManagedPolicyArns" not in role["Properties"]


def test_alarms_on_the_gatherer_the_dlq_and_the_provider_batches(
    synth: Synth, config: Config
) -> None:
    stack = config.stack_name
    alarms = {
        a["Properties"]["AlarmName"]: a["Properties"]
        for a in synth.resources("AWS::CloudWatch::Alarm").values()
    }
    (topic_id,) = synth.resources("AWS::SNS::Topic")
    gatherer_id, _ = _gatherer(synth)
    dlq_id, _ = _queues(synth)[batch_queue_name(stack, dlq=True)]
    expected = {
        f"{stack}-gatherer-errors": ("AWS/Lambda", "Errors", "Sum"),
        f"{stack}-dlq-batch": ("AWS/SQS", "ApproximateNumberOfMessagesVisible", "Maximum"),
        f"{stack}-batch-overdue": ("chatbatch", "BatchRouteOverdue", "Maximum"),
        f"{stack}-batch-failed": ("chatbatch", "BatchRouteFailed", "Sum"),
    }
    for name, (namespace, metric, statistic) in expected.items():
        alarm = alarms[name]
        assert (alarm["Namespace"], alarm["MetricName"], alarm["Statistic"]) == (
            namespace,
            metric,
            statistic,
        )
        assert alarm["Threshold"] == 1
        assert alarm["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
        assert alarm["AlarmActions"] == [{"Ref": topic_id}]
    assert alarms[f"{stack}-gatherer-errors"]["Dimensions"] == [
        {"Name": "FunctionName", "Value": {"Ref": gatherer_id}}
    ]
    assert alarms[f"{stack}-dlq-batch"]["Dimensions"] == [
        {"Name": "QueueName", "Value": {"Fn::GetAtt": [dlq_id, "QueueName"]}}
    ]
    for name in (f"{stack}-batch-overdue", f"{stack}-batch-failed"):
        assert alarms[name]["Dimensions"] == [{"Name": "service", "Value": "chatbatch"}]


def test_the_gatherers_metrics_are_service_level_and_each_alarmed(synth: Synth) -> None:
    """What the gatherer emits (``emitter``) is what its alarms read: with only the
    ``service`` dimension, under the contract's names."""
    gatherer = {m for m, spec in METRICS.items() if spec.emitter == "gatherer"}
    assert gatherer == {Metric.BATCH_ROUTE_OVERDUE, Metric.BATCH_ROUTE_FAILED}
    assert all(METRICS[m].service_level for m in gatherer)
    alarmed = {
        a["Properties"].get("MetricName")
        for a in synth.resources("AWS::CloudWatch::Alarm").values()
    }
    assert {m.value for m in gatherer} <= alarmed


def test_the_dashboard_shows_the_batch_route(synth: Synth) -> None:
    (dashboard,) = synth.resources("AWS::CloudWatch::Dashboard").values()
    body = json.dumps(dashboard["Properties"]["DashboardBody"])
    for shown in (
        "Batch route queue depth",
        "Jobs batched",
        "NumberOfMessagesSent",
        "NumberOfMessagesDeleted",
        "BatchRouteOverdue",
        "BatchRouteFailed",
    ):
        assert shown in body, shown


def test_outputs_name_the_batch_queue_dlq_and_gatherer(synth: Synth, config: Config) -> None:
    out = synth.template["Outputs"]
    queues = _queues(synth)
    gatherer_id, _ = _gatherer(synth)
    assert out[outputs.BATCH_QUEUE_URL]["Value"] == {
        "Ref": queues[batch_queue_name(config.stack_name)][0]
    }
    assert out[outputs.BATCH_DLQ_URL]["Value"] == {
        "Ref": queues[batch_queue_name(config.stack_name, dlq=True)][0]
    }
    assert out[outputs.GATHERER_FUNCTION_NAME]["Value"] == {"Ref": gatherer_id}
