"""The batch route's deployed parts (issue 17, docs/batch-route.md): its queue and DLQ,
the gatherer function, its role and its schedule.

``submit`` sends a job routed to a provider's batch API to the batch queue instead of
its priority's. No event source mapping reads that queue: the gatherer (handler
``GATHERER_HANDLER``, the worker's code asset and environment plus
``CHATBATCH_BATCH_QUEUE``) runs every ``GATHER_EVERY_MIN`` minutes on an EventBridge
schedule with ``GATHER_EVENT``, receives from it, creates and polls the provider
batches, and ingests their answers.

- **One run at a time**: reserved concurrency 1, so two runs never gather or ingest at
  once. A scheduled event that finds a run still going is throttled, and Lambda keeps
  retrying it; it is dropped once older than one schedule interval (the next event does
  the same work) and a failed run is not retried (the next run is minutes away, and every
  step is written to survive a crash).
- **Sized for a provider's output file** (up to 200 MB, read whole): 3008 MB, and
  Lambda's longest timeout, ``GATHER_TIMEOUT_S``; the queue's visibility timeout outlasts
  a run by a minute, so a run's messages stay hidden while it runs.
- **Its role** (what the gatherer's code calls): receive, delete and change visibility on
  the batch queue (never send: ``submit`` does); send to the priority queues (jobs going
  back to the synchronous path); the table as the worker has it (the limit override's
  Deny included); the bucket's ``GATHERER_S3_READS`` / ``GATHERER_S3_WRITES`` prefixes;
  the providers' key secrets; its own log group (EMF metrics go out in its logs: no
  ``cloudwatch:PutMetricData``); X-Ray.

Its alarms and dashboard widgets are ``infra.monitoring``'s.
"""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import Duration
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from chatbatch.core.config import Config, Priority
from chatbatch.core.resources import (
    BATCH_MAX_RECEIVES,
    ENV_BATCH_QUEUE,
    GATHER_EVENT,
    GATHER_EVERY_MIN,
    GATHER_TIMEOUT_S,
    batch_queue_name,
)
from infra.events import put_events_statement
from infra.queues import deny_other_senders, queue_with_dlq
from infra.worker import Worker, acknowledge_function, logged_role
from infra.worker_policy import prefixes, worker_data_statements

GATHERER_HANDLER = "chatbatch.batchroute.handler.handler"
GATHERER_MEMORY_MB = 3008  # a provider's output file is up to 200 MB, read whole
GATHER_SCHEDULE = events.Schedule.rate(Duration.minutes(GATHER_EVERY_MIN))
# a run's messages stay hidden for the whole run, and a minute more
BATCH_VISIBILITY_S = GATHER_TIMEOUT_S + 60
# receive and delete what it gathers; send again a job that waits for budget (delayed)
BATCH_QUEUE_ACTIONS = (
    "sqs:GetQueueAttributes",  # an empty short poll checked against the queue's depth
    "sqs:ReceiveMessage",
    "sqs:DeleteMessage",
    "sqs:ChangeMessageVisibility",
    "sqs:SendMessage",
)
# The bucket's prefixes (docs/batch-route.md): a part's input file under ``parts/``
# (written, and read again by a run that finds its record still ``creating``), claim-
# checked job bodies under ``claims/``; answers, costs and failed jobs' records written
# as the worker writes them, a stored result read back as the worker does.
GATHERER_S3_READS = ("parts/", "claims/", "results/")
GATHERER_S3_WRITES = (
    "parts/",
    "claims/",  # a job too large for a message, sent again (to sync, or to wait for budget)
    "results/",
    "costs/",
    "errors/",
    "requests/",
    "refused/",
)


class BatchRoute(Construct):
    """The batch queue and DLQ, the gatherer function, its role and its schedule."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: Config,
        worker: Worker,
        queues: dict[Priority, sqs.Queue],
        table: dynamodb.Table,
        bucket: s3.Bucket,
        secrets: dict[str, secretsmanager.ISecret],
    ) -> None:
        super().__init__(scope, construct_id)
        self.queue, self.dlq = queue_with_dlq(
            self,
            "Queue",
            name=batch_queue_name(config.stack_name),
            dlq_name=batch_queue_name(config.stack_name, dlq=True),
            config=config,
            visibility_timeout=Duration.seconds(BATCH_VISIBILITY_S),
            max_receive_count=BATCH_MAX_RECEIVES,
        )
        self.log_group, self.role = logged_role(self, "chatbatch batch route gatherer")
        self.function = lambda_.Function(
            self,
            "Function",
            description="chatbatch gatherer: batch queue -> provider batch APIs -> S3",
            runtime=worker.runtime,
            architecture=worker.architecture,
            handler=GATHERER_HANDLER,
            code=worker.code,
            memory_size=GATHERER_MEMORY_MB,
            timeout=Duration.seconds(GATHER_TIMEOUT_S),
            environment={**worker.environment, ENV_BATCH_QUEUE: self.queue.queue_url},
            role=self.role,
            log_group=self.log_group,
            tracing=lambda_.Tracing.ACTIVE,
            reserved_concurrent_executions=1,
            retry_attempts=0,
            max_event_age=Duration.minutes(GATHER_EVERY_MIN),
        )
        self.queue.grant(self.role, *BATCH_QUEUE_ACTIONS)
        for queue in queues.values():
            queue.grant_send_messages(self.role)
        reads, writes = GATHERER_S3_READS, GATHERER_S3_WRITES
        for statement in worker_data_statements(table, bucket, reads=reads, writes=writes):
            self.role.add_to_principal_policy(statement)
        for secret in secrets.values():
            secret.grant_read(self.role)
        if config.events.enabled:  # a batch whose last job it ingests: Batch Completed
            self.role.add_to_principal_policy(put_events_statement(self, config.events.bus))
        self.schedule = events.Rule(
            self,
            "Schedule",
            description=f"chatbatch: gather the batch route every {GATHER_EVERY_MIN} minutes",
            schedule=GATHER_SCHEDULE,
            targets=[
                targets.LambdaFunction(
                    self.function, event=events.RuleTargetInput.from_object(GATHER_EVENT)
                )
            ],
        )
        acknowledge_function(
            self.function,
            self.role,
            runtime=worker.runtime,
            bucket=bucket,
            prefixes=prefixes(reads, writes),
        )

    def restrict_senders(self, senders: Sequence[str]) -> None:
        """The priority queues' senders, on the batch queue and its DLQ
        (``PriorityQueues.restrict_senders``)."""
        deny_other_senders([self.queue, self.dlq], senders)
