"""The "Batch Completed" event's infrastructure: the worker's right to put it, and the
optional e-mail (``[events] email``): an SNS topic fed by an EventBridge rule on it.

The worker puts the event itself (``chatbatch.worker.completion``) on ``[events] bus``
(default: the account's default bus); its role may put only events whose source is
``chatbatch``, only on that bus. Other consumers add their own rules on the bus.
"""

from __future__ import annotations

from aws_cdk import Stack
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from constructs import Construct

from chatbatch.core.config import Config
from chatbatch.core.events import BATCH_COMPLETED, SOURCE


def put_events_statement(scope: Construct, bus: str) -> iam.PolicyStatement:
    """PutEvents on the one bus, for events with the ``chatbatch`` source only."""
    return iam.PolicyStatement(
        sid="PutBatchCompletedEvents",
        actions=["events:PutEvents"],
        resources=[bus_arn(scope, bus)],
        conditions={"StringEquals": {"events:source": SOURCE}},
    )


def bus_arn(scope: Construct, bus: str) -> str:
    return Stack.of(scope).format_arn(service="events", resource="event-bus", resource_name=bus)


def email_text() -> events.RuleTargetInput:
    """The e-mail's body: the batch, its counts, its cost and where its results are."""
    field = events.EventField.from_path
    return events.RuleTargetInput.from_multiline_text(
        f"chatbatch batch {field('$.detail.batch_id')} completed: "
        f"{field('$.detail.succeeded')} succeeded, {field('$.detail.failed')} failed, "
        f"{field('$.detail.cancelled')} cancelled, {field('$.detail.dead_lettered')} "
        f"dead-lettered of {field('$.detail.total')}; cost USD {field('$.detail.cost_usd')}.\n"
        f"Results: {field('$.detail.results')}\nErrors: {field('$.detail.errors')}\n"
        f"Collect them: chatbatch collect {field('$.detail.batch_id')}"
    )


class CompletionEvents(Construct):
    """The rule and e-mail topic of ``[events] email`` (nothing when it is not set)."""

    def __init__(self, scope: Construct, construct_id: str, *, config: Config) -> None:
        super().__init__(scope, construct_id)
        self.topic: sns.Topic | None = None
        self.rule: events.Rule | None = None
        settings = config.events
        if not (settings.enabled and settings.email):
            return
        # No KMS key: the e-mail carries a batch id, counts, a cost and an S3 prefix, no job
        # data; EventBridge cannot publish to a topic under the aws/sns managed key.
        self.topic = sns.Topic(
            self,
            "Topic",
            display_name=f"{config.stack_name} batches completed",
            enforce_ssl=True,
        )
        self.topic.add_subscription(subscriptions.EmailSubscription(settings.email))
        bus = events.EventBus.from_event_bus_name(self, "Bus", settings.bus)
        self.rule = events.Rule(
            self,
            "BatchCompleted",
            event_bus=bus,
            description=f"{config.stack_name}: e-mail every Batch Completed event",
            event_pattern=events.EventPattern(source=[SOURCE], detail_type=[BATCH_COMPLETED]),
        )
        self.rule.add_target(targets.SnsTopic(self.topic, message=email_text()))
