"""A deployment as the CLI sees it: found by its stack's outputs, then its queues, table and
bucket behind small accessors.

Discovery is one call, CloudFormation ``DescribeStacks`` of the stack named by ``--stack``
(default: ``stack_name`` in the config), whose outputs name every resource
(``chatbatch.core.resources`` holds the keys). ``chatbatch local up`` registers a stack with the
same outputs in moto, so the local runtime is found the very same way. The AWS session
honours ``AWS_PROFILE``, ``AWS_REGION`` (before ``AWS_DEFAULT_REGION``) and
``AWS_ENDPOINT_URL``, like the AWS CLI.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError
from pydantic import BaseModel

from chatbatch.core import scale
from chatbatch.core.config import Config
from chatbatch.core.resources import MissingOutputs, Resources, resources_from_outputs
from chatbatch.state.batches import Batches
from chatbatch.state.breaker import Breakers
from chatbatch.state.budget.budget import Budget
from chatbatch.state.budget.pause import BudgetPause
from chatbatch.state.queue_switch import QueueSwitch, queue_switch
from chatbatch.state.sender import BATCH_LANE, Lane
from chatbatch.state.store import Store

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_sqs import SQSClient

# HTTP connections per client: the CLI's thread pools share one client per service
POOLED = BotoConfig(max_pool_connections=64)


class StackNotFound(LookupError):
    """No usable stack under that name; the message says what to do."""


class QueueDepth(BaseModel):
    priority: Lane  # a priority's queue, or the batch route's ("batch")
    queued: int
    in_flight: int
    delayed: int
    dead_letters: int


def session() -> boto3.Session:
    """A session as the AWS CLI would make it: ``AWS_REGION`` wins over the default region."""
    return boto3.Session(region_name=os.environ.get("AWS_REGION") or None)


def where(aws: boto3.Session) -> str:
    """The region (and endpoint, when overridden) a session talks to, for messages."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    region = aws.region_name or "(no region)"
    return f"{region} at {endpoint}" if endpoint else region


def stack_outputs(aws: boto3.Session, stack: str) -> dict[str, str]:
    try:
        stacks = aws.client("cloudformation").describe_stacks(StackName=stack)["Stacks"]
    except ClientError as err:
        error = err.response.get("Error", {})
        if error.get("Code") == "ValidationError" and "does not exist" in error.get("Message", ""):
            raise StackNotFound(
                f"no stack named {stack!r} in {where(aws)}: deploy it (npx aws-cdk@2 deploy), "
                "pass --stack NAME, or start `chatbatch local up` and export what it prints"
            ) from None
        raise
    return {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}


def connect(config: Config, stack: str | None = None) -> Deployment:
    """The deployment of ``stack`` (default: the config's ``stack_name``)."""
    name = stack or config.stack_name
    aws = session()
    try:
        resources = resources_from_outputs(stack_outputs(aws, name))
    except MissingOutputs as err:
        raise StackNotFound(
            f"stack {name!r} in {where(aws)} is not a chatbatch deployment ({err}); "
            "pass --stack with the name of a chatbatch stack"
        ) from None
    return Deployment(config=config, stack=name, resources=resources, aws=aws)


@dataclass
class Deployment:
    config: Config
    stack: str
    resources: Resources
    aws: boto3.Session

    @cached_property
    def sqs(self) -> SQSClient:
        return self.aws.client("sqs", config=POOLED)

    @cached_property
    def s3(self) -> S3Client:
        return self.aws.client("s3", config=POOLED)

    @cached_property
    def ddb(self) -> DynamoDBClient:
        return self.aws.client("dynamodb", config=POOLED)

    @cached_property
    def batches(self) -> Batches:
        return Batches(
            self.ddb, self.resources.table, counter_shards=scale.plan(self.config).counter_shards
        )

    @cached_property
    def breakers(self) -> Breakers:
        return Breakers(self.ddb, self.resources.table)

    @cached_property
    def store(self) -> Store:
        return Store(self.s3, self.resources.bucket)

    @cached_property
    def budget(self) -> Budget:
        return Budget(self.ddb, self.resources.table, self.config)

    @cached_property
    def pause(self) -> BudgetPause:
        return BudgetPause(self.ddb, self.resources.table, cache_s=0)

    @cached_property
    def switch(self) -> QueueSwitch:
        """The queues' switch: the worker function's event source mappings (its name from
        the stack's outputs), or a local runtime's table switch."""
        spec = self.resources.queue_switch
        if spec is None:
            raise MissingOutputs(
                f"stack {self.stack!r} has no WorkerFunctionName output: redeploy it"
            )
        return queue_switch(self.ddb, self.resources.table, lambda: self.aws.client("lambda"), spec)

    # --- queues ------------------------------------------------------------------

    def _attributes(self, url: str) -> dict[str, int]:
        reply = self.sqs.get_queue_attributes(
            QueueUrl=url,
            AttributeNames=[
                "ApproximateNumberOfMessages",
                "ApproximateNumberOfMessagesNotVisible",
                "ApproximateNumberOfMessagesDelayed",
            ],
        )
        return {name: int(value) for name, value in reply.get("Attributes", {}).items()}

    def queue_depths(self) -> list[QueueDepth]:
        """Each priority's queue and DLQ, and the batch route's when deployed."""
        lanes: list[tuple[Lane, str, str | None]] = [
            (priority, url, self.resources.dlqs.get(priority))
            for priority, url in self.resources.queues.items()
        ]
        if self.resources.batch_queue:
            lanes.append((BATCH_LANE, self.resources.batch_queue, self.resources.batch_dlq))
        depths = []
        for lane, url, dlq_url in lanes:
            main = self._attributes(url)
            dlq = self._attributes(dlq_url) if dlq_url else {}
            depths.append(
                QueueDepth(
                    priority=lane,
                    queued=main.get("ApproximateNumberOfMessages", 0),
                    in_flight=main.get("ApproximateNumberOfMessagesNotVisible", 0),
                    delayed=main.get("ApproximateNumberOfMessagesDelayed", 0),
                    dead_letters=dlq.get("ApproximateNumberOfMessages", 0)
                    + dlq.get("ApproximateNumberOfMessagesNotVisible", 0),
                )
            )
        return depths

    def redrive(self, priority: Lane, on_moved: Callable[[int], None]) -> int:
        """Move every message of ``priority``'s DLQ (``batch``: the batch route's) back to
        its queue; returns how many.

        Receive, send, delete, 10 at a time (moto has no StartMessageMoveTask). A message
        is deleted from the DLQ only once its copy is in the queue: a crash in between
        redrives it twice, and the worker's idempotency makes that harmless.
        """
        if priority == BATCH_LANE:
            dlq, queue = self.resources.batch_dlq, self.resources.batch_queue
        else:
            dlq, queue = self.resources.dlqs.get(priority), self.resources.queues[priority]
        if dlq is None or queue is None:
            return 0
        moved = 0
        empty_receives = 0
        while empty_receives < 3:
            messages = self.sqs.receive_message(
                QueueUrl=dlq,
                MaxNumberOfMessages=10,
                MessageAttributeNames=["All"],
                VisibilityTimeout=60,
            ).get("Messages", [])
            if not messages:
                # short polling samples a subset of SQS's servers: ask the depth to be sure
                empty_receives += 1 if self._attributes(dlq)["ApproximateNumberOfMessages"] else 3
                continue
            moved += self._move(messages, dlq, queue)
            on_moved(moved)
        return moved

    def _move(self, messages: list[Any], dlq: str, queue: str) -> int:
        entries = [
            {
                "Id": str(i),
                "MessageBody": m["Body"],
                "MessageAttributes": {
                    name: {k: v for k, v in attr.items() if k in _ATTRIBUTE_FIELDS}
                    for name, attr in m.get("MessageAttributes", {}).items()
                },
            }
            for i, m in enumerate(messages)
        ]
        reply = self.sqs.send_message_batch(QueueUrl=queue, Entries=entries)  # type: ignore[arg-type]
        sent = {ok["Id"] for ok in reply.get("Successful", [])}
        done = [
            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
            for i, m in enumerate(messages)
            if str(i) in sent
        ]
        if done:
            self.sqs.delete_message_batch(QueueUrl=dlq, Entries=done)  # type: ignore[arg-type]
        if failed := reply.get("Failed"):
            raise RuntimeError(f"SQS refused {len(failed)} message(s): {failed[0].get('Message')}")
        return len(done)


_ATTRIBUTE_FIELDS = {"DataType", "StringValue", "BinaryValue"}
