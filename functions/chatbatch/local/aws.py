"""The AWS side of the embedded default: moto, and the stack's resources created in it.

The queues, DLQs, table and bucket are created from the same config and the same names
(``chatbatch.core.resources``) the CDK stack uses, so the local pipeline is the deployed one.

``local run`` uses moto in-process (about 2.5x faster than its HTTP server on this kind
of machine); ``local up`` runs moto's HTTP server so other terminals can reach it
through ``AWS_ENDPOINT_URL``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import boto3
import httpx

from chatbatch.core.config import Config, Priority
from chatbatch.core.resources import (
    BATCH_MAX_RECEIVES,
    GATHER_TIMEOUT_S,
    TABLE_PK,
    TABLE_SK,
    TABLE_TTL,
    Resources,
    batch_queue_name,
    queue_name,
)

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_sqs import SQSClient

REGION = "us-east-1"
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_REGION": REGION,
}


@contextmanager
def patched_env(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


@contextmanager
def moto_in_process() -> Iterator[None]:
    from moto import mock_aws

    from chatbatch.local import moto_fixes

    moto_fixes.apply()
    with patched_env(FAKE_CREDENTIALS), mock_aws():
        yield


@contextmanager
def moto_server(port: int = 0) -> Iterator[str]:
    """moto's HTTP server on loopback; yields its endpoint URL (also set as AWS_ENDPOINT_URL)."""
    from moto.server import ThreadedMotoServer

    from chatbatch.local import moto_fixes

    moto_fixes.apply()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    host, bound = server.get_host_and_port()
    endpoint = f"http://{host}:{bound}"
    # The server serves the process's own moto backends, which an earlier server of the
    # process left as they were (its queues, with their attributes, refuse a new
    # runtime's CreateQueue): start from nothing, as an in-process mock_aws does.
    httpx.post(f"{endpoint}/moto-api/reset", timeout=30, trust_env=False).raise_for_status()
    try:
        with patched_env({**FAKE_CREDENTIALS, "AWS_ENDPOINT_URL": endpoint}):
            yield endpoint
    finally:
        server.stop()


def _create_queue(sqs: SQSClient, name: str, attributes: dict[Any, str]) -> tuple[str, str]:
    url = sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]
    return url, arn["QueueArn"]


def create_table(ddb: DynamoDBClient, name: str) -> None:
    """The state table as the stack defines it: string pk/sk, TTL on expires_at, on demand."""
    ddb.create_table(
        TableName=name,
        KeySchema=[
            {"AttributeName": TABLE_PK, "KeyType": "HASH"},
            {"AttributeName": TABLE_SK, "KeyType": "RANGE"},
        ],
        AttributeDefinitions=[
            {"AttributeName": TABLE_PK, "AttributeType": "S"},
            {"AttributeName": TABLE_SK, "AttributeType": "S"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    ddb.update_time_to_live(
        TableName=name,
        TimeToLiveSpecification={"Enabled": True, "AttributeName": TABLE_TTL},
    )


def _create_queue_pair(
    sqs: SQSClient,
    config: Config,
    name: str,
    dlq_name: str,
    visibility_timeout_s: int,
    max_receives: int | None = None,
) -> tuple[str, str]:
    """A queue redriving to its DLQ after ``max_receives`` deliveries (default the
    config's ``max_receive_count``), as the stack's; returns (queue URL, DLQ URL)."""
    dlq_url, dlq_arn = _create_queue(sqs, dlq_name, {"MessageRetentionPeriod": str(14 * 86_400)})
    receives = max_receives or config.worker.max_receive_count
    redrive = {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": receives}
    url, _ = _create_queue(
        sqs,
        name,
        {
            "MessageRetentionPeriod": str(config.worker.retention_days * 86_400),
            "VisibilityTimeout": str(visibility_timeout_s),
            "RedrivePolicy": json.dumps(redrive),
        },
    )
    return url, dlq_url


def create_resources(config: Config, visibility_timeout_s: int | None = None) -> Resources:
    """Create the stack's queues, DLQs, table and bucket in the current (moto) account.

    The queues' visibility timeout is the function timeout and a minute unless given: an
    invocation that runs as long as it may (and then settles and deletes) is never
    delivered twice meanwhile. The deployed queues use 6x the timeout; here a crashed
    invocation's jobs come back after ~3 min, not 12 (the worker shortens it per message
    on transient errors). The batch route's queue outlasts a gather run
    (``GATHER_TIMEOUT_S`` and a minute), as deployed: no poller reads it, the gatherer does.
    """
    visibility_timeout_s = visibility_timeout_s or config.worker.timeout_s + 60
    sqs = boto3.client("sqs")
    stack = config.stack_name
    queues: dict[Priority, str] = {}
    dlqs: dict[Priority, str] = {}
    for priority in Priority:
        queues[priority], dlqs[priority] = _create_queue_pair(
            sqs,
            config,
            queue_name(stack, priority),
            queue_name(stack, priority, dlq=True),
            visibility_timeout_s,
        )
    batch_queue, batch_dlq = _create_queue_pair(
        sqs,
        config,
        batch_queue_name(stack),
        batch_queue_name(stack, dlq=True),
        GATHER_TIMEOUT_S + 60,
        BATCH_MAX_RECEIVES,
    )

    table = f"{config.stack_name}-state"
    create_table(boto3.client("dynamodb"), table)
    bucket = f"{config.stack_name}-data-local"
    boto3.client("s3").create_bucket(Bucket=bucket)
    # the queues' consumers (the emulator's pollers) are switched by an item on the table
    return Resources(
        table=table,
        bucket=bucket,
        queues=queues,
        dlqs=dlqs,
        queue_switch="table",
        batch_queue=batch_queue,
        batch_dlq=batch_dlq,
    )
