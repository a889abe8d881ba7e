"""One SQS queue per priority, each with its own dead-letter queue."""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import Duration
from aws_cdk import aws_iam as iam
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from chatbatch.core.config import Config, Priority
from chatbatch.core.resources import queue_name

# A message's age counts from its first enqueue even after it moves to a DLQ, so the DLQ
# keeps the maximum (14 days) to leave time to inspect and redrive.
DLQ_RETENTION = Duration.days(14)
# AWS guidance for SQS event sources: visibility timeout >= 6x the function timeout (plus
# the batching window), so a message is not redelivered while a retried batch still runs.
VISIBILITY_FACTOR = 6


def visibility_timeout_s(config: Config) -> int:
    return VISIBILITY_FACTOR * config.worker.timeout_s + config.worker.batch_window_s


def queue_with_dlq(
    scope: Construct,
    construct_id: str,
    *,
    name: str,
    dlq_name: str,
    config: Config,
    visibility_timeout: Duration,
    max_receive_count: int | None = None,
) -> tuple[sqs.Queue, sqs.Queue]:
    """An encrypted, TLS-only queue redriving to its own DLQ after ``max_receive_count``
    deliveries (default the config's): (queue, DLQ). The construct ids are
    ``construct_id`` and ``...Dlq``."""
    dlq = sqs.Queue(
        scope,
        f"{construct_id}Dlq",
        queue_name=dlq_name,
        encryption=sqs.QueueEncryption.SQS_MANAGED,
        enforce_ssl=True,
        retention_period=DLQ_RETENTION,
    )
    # Retention (config.worker.retention_days, 4 by default) outlasts a budget
    # deferral across a UTC day boundary: a deferred job is re-sent, never dropped.
    queue = sqs.Queue(
        scope,
        construct_id,
        queue_name=name,
        encryption=sqs.QueueEncryption.SQS_MANAGED,
        enforce_ssl=True,
        retention_period=Duration.days(config.worker.retention_days),
        visibility_timeout=visibility_timeout,
        dead_letter_queue=sqs.DeadLetterQueue(
            queue=dlq, max_receive_count=max_receive_count or config.worker.max_receive_count
        ),
    )
    return queue, dlq


def deny_other_senders(queues: Sequence[sqs.Queue], senders: Sequence[str]) -> None:
    """Deny SendMessage on each of ``queues`` to any principal whose ARN matches none of
    ``senders``, next to the TLS-only Deny."""
    for queue in queues:
        queue.add_to_resource_policy(
            iam.PolicyStatement(
                sid="OnlyNamedProducersSend",
                effect=iam.Effect.DENY,
                principals=[iam.AnyPrincipal()],
                actions=["sqs:SendMessage"],
                resources=[queue.queue_arn],
                conditions={"ArnNotLike": {"aws:PrincipalArn": list(senders)}},
            )
        )


class PriorityQueues(Construct):
    """critical, high, normal, low: encrypted, TLS-only, redriving to their DLQs; only
    named senders may send (``restrict_senders``)."""

    def __init__(self, scope: Construct, construct_id: str, *, config: Config) -> None:
        super().__init__(scope, construct_id)
        self.queues: dict[Priority, sqs.Queue] = {}
        self.dlqs: dict[Priority, sqs.Queue] = {}
        for priority in Priority:
            queue, dlq = queue_with_dlq(
                self,
                priority.value.capitalize(),
                name=queue_name(config.stack_name, priority),
                dlq_name=queue_name(config.stack_name, priority, dlq=True),
                config=config,
                visibility_timeout=Duration.seconds(visibility_timeout_s(config)),
            )
            self.queues[priority] = queue
            self.dlqs[priority] = dlq

    def restrict_senders(self, senders: Sequence[str]) -> None:
        """Deny SendMessage on every queue and DLQ to any principal whose ARN matches none
        of ``senders`` (the producers, the worker's role and the gatherer's, which sends
        jobs back to the synchronous path), next to the TLS-only Deny. The DLQs too: a
        job planted there would come back with whoever redrives it."""
        deny_other_senders([*self.queues.values(), *self.dlqs.values()], senders)
