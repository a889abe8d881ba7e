"""The chatbatch stack: composes the constructs and publishes the outputs."""

from __future__ import annotations

from pathlib import Path

from aws_cdk import CfnOutput, Stack
from constructs import Construct

from chatbatch.core.config import Config
from chatbatch.core.resources import ENV_TRUSTED_SENDERS
from infra import outputs
from infra.batch_route import BatchRoute
from infra.bundling import AssetInputs
from infra.costs_table import CostsTable
from infra.events import CompletionEvents
from infra.monitoring import Monitoring
from infra.queues import PriorityQueues
from infra.secrets import ProviderSecrets
from infra.state import StateTable
from infra.storage import DataBucket
from infra.worker import Worker


class ChatbatchStack(Stack):
    """Queues, state, storage, secrets, worker, batch route, monitoring and events of one
    deployment. ``producers``: the ARNs that may send to the queues (besides the worker's
    and the gatherer's roles)."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: Config,
        asset: AssetInputs,
        cache_root: Path,
        producers: list[str],
        alarm_email: str | None = None,
    ) -> None:
        super().__init__(
            scope,
            construct_id,
            stack_name=config.stack_name,
            description="chatbatch: SQS priority queues -> Lambda worker -> chat API -> S3",
        )
        self.queues = PriorityQueues(self, "Queues", config=config)
        self.state = StateTable(self, "State")
        self.storage = DataBucket(self, "Storage")
        self.secrets = ProviderSecrets(self, "Secrets", config=config)
        self.worker = Worker(
            self,
            "Worker",
            config=config,
            asset=asset,
            cache_root=cache_root,
            queues=self.queues.queues,
            table=self.state.table,
            bucket=self.storage.bucket,
            secrets=self.secrets.secrets,
        )
        self.batch_route = BatchRoute(
            self,
            "BatchRoute",
            config=config,
            worker=self.worker,
            queues=self.queues.queues,
            table=self.state.table,
            bucket=self.storage.bucket,
            secrets=self.secrets.secrets,
        )
        # the gatherer sends jobs back to the priority queues: the worker takes them as its own
        self.worker.function.add_environment(ENV_TRUSTED_SENDERS, self.batch_route.role.role_id)
        self.costs = CostsTable(self, "Costs", bucket=self.storage.bucket)
        senders = [*producers, self.worker.role.role_arn, self.batch_route.role.role_arn]
        self.queues.restrict_senders(senders)
        self.batch_route.restrict_senders(senders)
        self.monitoring = Monitoring(
            self,
            "Monitoring",
            config=config,
            function=self.worker.function,
            queues=self.queues.queues,
            dlqs=self.queues.dlqs,
            batch_route=self.batch_route,
            alarm_email=alarm_email,
        )
        self.events = CompletionEvents(self, "Events", config=config)

        # Outputs live at stack level so their keys are exactly the names in infra.outputs.
        def output(key: str, value: str, description: str) -> None:
            CfnOutput(self, key, value=value, description=description)

        for priority, queue in self.queues.queues.items():
            output(outputs.queue_url_key(priority), queue.queue_url, f"{priority} queue")
        for priority, dlq in self.queues.dlqs.items():
            output(outputs.dlq_url_key(priority), dlq.queue_url, f"{priority} dead-letter queue")
        output(outputs.BUCKET_NAME, self.storage.bucket.bucket_name, "results, errors, costs")
        output(outputs.TABLE_NAME, self.state.table.table_name, "shared state")
        output(outputs.WORKER_FUNCTION_NAME, self.worker.function.function_name, "worker")
        route = self.batch_route
        output(outputs.BATCH_QUEUE_URL, route.queue.queue_url, "batch route queue")
        output(outputs.BATCH_DLQ_URL, route.dlq.queue_url, "batch route dead-letter queue")
        output(outputs.GATHERER_FUNCTION_NAME, route.function.function_name, "gatherer")
        output(outputs.ALARM_TOPIC_ARN, self.monitoring.topic.topic_arn, "alarm notifications")
        output(
            outputs.DASHBOARD_NAME, self.monitoring.dashboard.dashboard_name, "CloudWatch dashboard"
        )
        output(outputs.COSTS_WORKGROUP, self.costs.workgroup_name, "Athena: costs --athena")
        output(
            outputs.COSTS_QUERY_POLICY_ARN,
            self.costs.query_policy.managed_policy_arn,
            "attach to whoever runs `chatbatch costs --athena`",
        )
        for provider, secret in self.secrets.secrets.items():
            output(
                outputs.secret_arn_key(provider),
                secret.secret_arn,
                f"API key of provider {provider}: set it with put-secret-value",
            )
