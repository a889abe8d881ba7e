"""What the synthesized template promises: queues, event sources, state, storage, secrets,
worker, IAM, alarms, dashboard, outputs."""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal
from typing import Any

from aws_cdk.assertions import Match
from synth_support import ROOT, Synth, function, role_statements

from chatbatch.core.config import Config, Priority
from chatbatch.core.metrics import METRICS
from chatbatch.core.resources import TABLE_PK, TABLE_SK, TABLE_TTL, queue_name
from infra import outputs
from infra.queues import visibility_timeout_s
from infra.secrets import secret_env_name
from infra.worker import HANDLER


def _by_name(synth: Synth) -> dict[str, tuple[str, dict[str, Any]]]:
    """Queue name -> (logical id, properties)."""
    return {
        r["Properties"]["QueueName"]: (lid, r["Properties"])
        for lid, r in synth.resources("AWS::SQS::Queue").items()
    }


def _tls_only(statement: dict[str, Any]) -> bool:
    return (
        statement["Effect"] == "Deny"
        and statement.get("Condition") == {"Bool": {"aws:SecureTransport": "false"}}
        and statement["Principal"] == {"AWS": "*"}
    )


def test_eight_encrypted_tls_only_queues_with_redrive(synth: Synth, config: Config) -> None:
    queues = _by_name(synth)
    assert len(queues) == 8 + 2  # and the batch route's two (test_stack_batch_route)
    day = 24 * 3600
    for priority in Priority:
        dlq_id, dlq = queues[queue_name(config.stack_name, priority, dlq=True)]
        _, queue = queues[queue_name(config.stack_name, priority)]
        assert queue["RedrivePolicy"] == {
            "deadLetterTargetArn": {"Fn::GetAtt": [dlq_id, "Arn"]},
            "maxReceiveCount": config.worker.max_receive_count,
        }
        assert queue["MessageRetentionPeriod"] == config.worker.retention_days * day
        assert dlq["MessageRetentionPeriod"] == 14 * day
        assert queue["VisibilityTimeout"] == visibility_timeout_s(config)
        assert queue["VisibilityTimeout"] >= 6 * config.worker.timeout_s
        assert queue["SqsManagedSseEnabled"] is True
        assert dlq["SqsManagedSseEnabled"] is True
    policies = synth.resources("AWS::SQS::QueuePolicy").values()
    protected = {
        ref["Ref"]
        for p in policies
        if any(_tls_only(s) for s in p["Properties"]["PolicyDocument"]["Statement"])
        for ref in p["Properties"]["Queues"]
    }
    assert protected == {lid for lid, _ in queues.values()}


def test_four_event_sources_with_partial_batch_failures(synth: Synth, config: Config) -> None:
    queue_ids = {lid: name for name, (lid, _) in _by_name(synth).items()}
    mappings = synth.resources("AWS::Lambda::EventSourceMapping")
    assert len(mappings) == 4
    seen = set()
    for mapping in mappings.values():
        props = mapping["Properties"]
        name = queue_ids[props["EventSourceArn"]["Fn::GetAtt"][0]]
        priority = Priority(name.removeprefix(f"{config.stack_name}-"))
        seen.add(priority)
        assert props["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
        assert props["ScalingConfig"] == {
            "MaximumConcurrency": config.priorities[priority].max_concurrency
        }
        assert props["BatchSize"] == config.worker.batch_size
        assert props["MaximumBatchingWindowInSeconds"] == config.worker.batch_window_s
    assert seen == set(Priority)  # one per priority, none on a DLQ


def test_state_table_has_ttl_pitr_encryption_and_is_retained(synth: Synth) -> None:
    synth.assertions.resource_count_is("AWS::DynamoDB::Table", 1)
    synth.assertions.has_resource(
        "AWS::DynamoDB::Table",
        {
            "Properties": {
                "KeySchema": [
                    {"AttributeName": TABLE_PK, "KeyType": "HASH"},
                    {"AttributeName": TABLE_SK, "KeyType": "RANGE"},
                ],
                "AttributeDefinitions": Match.array_with(
                    [{"AttributeName": TABLE_PK, "AttributeType": "S"}]
                ),
                "BillingMode": "PAY_PER_REQUEST",
                "TimeToLiveSpecification": {"AttributeName": TABLE_TTL, "Enabled": True},
                "PointInTimeRecoverySpecification": {"PointInTimeRecoveryEnabled": True},
                "SSESpecification": {"SSEEnabled": True},  # KMS, the aws/dynamodb key
            },
            "DeletionPolicy": "Retain",
            "UpdateReplacePolicy": "Retain",
        },
    )


def test_buckets_are_private_encrypted_tls_only_and_data_is_versioned(synth: Synth) -> None:
    buckets = synth.resources("AWS::S3::Bucket")
    assert len(buckets) == 2
    (data_id,) = (k for k, b in buckets.items() if "LoggingConfiguration" in b["Properties"])
    (logs_id,) = set(buckets) - {data_id}
    for bucket in buckets.values():
        props = bucket["Properties"]
        assert props["PublicAccessBlockConfiguration"] == {
            "BlockPublicAcls": True,
            "BlockPublicPolicy": True,
            "IgnorePublicAcls": True,
            "RestrictPublicBuckets": True,
        }
        (rule,) = props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
        assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
        assert bucket["DeletionPolicy"] == "Retain"
    data = buckets[data_id]["Properties"]
    assert data["VersioningConfiguration"] == {"Status": "Enabled"}
    assert data["LoggingConfiguration"]["DestinationBucketName"] == {"Ref": logs_id}
    rules = {r["Id"]: r for r in data["LifecycleConfiguration"]["Rules"]}
    assert rules["expire-cache"]["Prefix"] == "cache/"
    assert rules["expire-cache"]["ExpirationInDays"] == 30
    assert rules["expire-claims"]["Prefix"] == "claims/"
    assert "NoncurrentVersionExpiration" in rules["expire-noncurrent-versions"]
    assert all(r["Status"] == "Enabled" for r in rules.values())
    tls_only = {
        p["Properties"]["Bucket"]["Ref"]
        for p in synth.resources("AWS::S3::BucketPolicy").values()
        if any(_tls_only(s) for s in p["Properties"]["PolicyDocument"]["Statement"])
    }
    assert tls_only == {data_id, logs_id}


def test_no_secret_value_in_the_template(synth: Synth, config: Config) -> None:
    secrets = synth.resources("AWS::SecretsManager::Secret")
    assert len(secrets) == len(config.providers)
    for secret in secrets.values():
        assert "SecretString" not in secret["Properties"]  # generated at deploy time instead
    text = json.dumps(synth.template)
    assert '"SecretString"' not in text
    assert "{{resolve:secretsmanager" not in text
    functions = synth.resources("AWS::Lambda::Function").values()
    assert len(functions) == 2  # the worker and the batch route's gatherer
    for fn in functions:
        env = fn["Properties"]["Environment"]["Variables"]
        assert not [k for k in env if k.endswith("API_KEY")]
        secret_ids = {lid for lid in secrets}
        for provider in config.providers:
            assert env[secret_env_name(provider)]["Ref"] in secret_ids  # the ARN, not the value


def test_worker_function(synth: Synth, config: Config) -> None:
    _, worker = function(synth)
    props = worker["Properties"]
    assert props["Handler"] == HANDLER
    assert props["Runtime"] == f"python{config.worker.runtime}"
    assert props["Architectures"] == [config.worker.architecture]
    assert props["MemorySize"] == config.worker.memory_mb
    assert props["Timeout"] == config.worker.timeout_s
    assert props["RecursiveLoop"] == "Allow"  # deferred jobs are re-sent to the same queues
    assert props["TracingConfig"] == {"Mode": "Active"}
    env = props["Environment"]["Variables"]
    assert env["CHATBATCH_CONFIG"] == "/var/task/chatbatch.toml"
    assert env["POWERTOOLS_SERVICE_NAME"] == "chatbatch"
    assert env["POWERTOOLS_METRICS_NAMESPACE"] == "chatbatch"
    assert env["POWERTOOLS_LOG_LEVEL"] == "INFO"
    expected = {
        "CHATBATCH_CONFIG",
        "CHATBATCH_TABLE",
        "CHATBATCH_BUCKET",
        "CHATBATCH_TRUSTED_SENDERS",  # the gatherer's role: its jobs back to sync
        *(f"CHATBATCH_QUEUE_{p.value.upper()}" for p in Priority),
        *(secret_env_name(p) for p in config.providers),
        "POWERTOOLS_SERVICE_NAME",
        "POWERTOOLS_METRICS_NAMESPACE",
        "POWERTOOLS_LOG_LEVEL",
        "POWERTOOLS_LOGGER_LOG_EVENT",
        "POWERTOOLS_TRACER_CAPTURE_RESPONSE",
    }
    assert set(env) == expected
    queues = _by_name(synth)
    for p in Priority:
        assert env[f"CHATBATCH_QUEUE_{p.value.upper()}"] == {
            "Ref": queues[queue_name(config.stack_name, p)][0]
        }


def test_worker_role_is_least_privilege(synth: Synth, config: Config) -> None:
    for role in synth.resources("AWS::IAM::Role").values():  # the worker's, the gatherer's
        assert "ManagedPolicyArns" not in role["Properties"]
    # the worker's policies (the budget pause's Lambda rights are their own)
    statements = role_statements(synth)
    actions = {
        a
        for s in statements
        for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
    }
    assert not [a for a in actions if a.endswith("*")]
    (sqs,) = (s for s in statements if "sqs:SendMessage" in s["Action"])
    queues = _by_name(synth)
    main = {queues[queue_name(config.stack_name, p)][0] for p in Priority}
    assert {r["Fn::GetAtt"][0] for r in sqs["Resource"]} == main  # never the DLQs
    assert "sqs:ReceiveMessage" in sqs["Action"]
    wildcards = [s for s in statements if s["Resource"] == "*"]
    on_any = {
        a
        for s in wildcards
        for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
    }
    # X-Ray's, and listing event source mappings, which IAM allows only on every resource
    assert on_any == {
        "xray:PutTraceSegments",
        "xray:PutTelemetryRecords",
        "lambda:ListEventSourceMappings",
    }


def test_alarms(synth: Synth, config: Config) -> None:
    alarms = {
        a["Properties"]["AlarmName"]: a["Properties"]
        for a in synth.resources("AWS::CloudWatch::Alarm").values()
    }
    stack = config.stack_name
    (topic_id,) = synth.resources("AWS::SNS::Topic")
    for alarm in alarms.values():
        assert alarm["AlarmActions"] == [{"Ref": topic_id}]
    for p in Priority:
        dlq = alarms[f"{stack}-dlq-{p.value}"]
        assert dlq["MetricName"] == "ApproximateNumberOfMessagesVisible"
        assert dlq["Threshold"] == 1
        assert dlq["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
        age = alarms[f"{stack}-oldest-{p.value}"]
        assert age["MetricName"] == "ApproximateAgeOfOldestMessage"
        assert 0 < age["Threshold"] < config.worker.retention_days * 24 * 3600
    budget = alarms[f"{stack}-budget"]
    assert (budget["Namespace"], budget["MetricName"]) == ("chatbatch", "CostUSD")
    assert Decimal(str(budget["Threshold"])) == Decimal("0.8") * config.budget.daily_usd
    assert budget["Period"] == 24 * 3600
    errors = alarms[f"{stack}-job-error-rate"]
    used = {m["MetricStat"]["Metric"]["MetricName"] for m in errors["Metrics"] if "MetricStat" in m}
    assert used == {"JobsFailed", "JobsSucceeded"}
    assert f"{stack}-worker-error-rate" in alarms
    paused = alarms[f"{stack}-paused"]
    assert (paused["MetricName"], paused["Threshold"]) == ("JobsPaused", 1)
    assert paused["Dimensions"] == [{"Name": "service", "Value": "chatbatch"}]
    assert len(alarms) == 4 + 4 + 4 + 4  # the batch route's four: test_stack_batch_route


def test_dashboard_shows_what_the_issue_asks_for(synth: Synth) -> None:
    (dashboard,) = synth.resources("AWS::CloudWatch::Dashboard").values()
    body = json.dumps(dashboard["Properties"]["DashboardBody"])
    for metric in METRICS:
        assert metric in body, metric
    for shown in (
        "'p50'",
        "'p99'",
        "ApproximateNumberOfMessagesVisible",
        "ApproximateAgeOfOldestMessage",
        "Dead-letter queue depth",
        "Budget used today",
        "Cost per hour",
    ):
        assert shown in body, shown


def test_outputs_have_the_stable_keys_the_cli_reads(synth: Synth, config: Config) -> None:
    expected = set(outputs.OUTPUT_KEYS.values()) | {
        outputs.secret_arn_key(p) for p in config.providers
    }
    assert set(synth.template["Outputs"]) == expected
    assert outputs.queue_url_key(Priority.critical) == "QueueUrlCritical"
    assert outputs.dlq_url_key(Priority.critical) == "DlqUrlCritical"
    queues = _by_name(synth)
    for p in Priority:
        url = synth.template["Outputs"][outputs.queue_url_key(p)]["Value"]
        assert url == {"Ref": queues[queue_name(config.stack_name, p)][0]}


def test_output_keys_import_without_cdk() -> None:
    code = "import sys, infra.outputs; assert 'aws_cdk' not in sys.modules, 'imports CDK'"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
