"""The Lambda worker and its four SQS event sources."""

from __future__ import annotations

from pathlib import Path
from typing import cast

from aws_cdk import Acknowledgment, CfnElement, Duration, Stack, Validations
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_event_sources as events
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from chatbatch.core.config import CONFIG_ENV, Config, Priority
from chatbatch.core.metrics import NAMESPACE as METRICS_NAMESPACE
from chatbatch.core.metrics import SERVICE as SERVICE_NAME
from chatbatch.core.resources import Resources
from chatbatch.core.sizing import worker_sizing
from infra.budget_pause import BudgetPause
from infra.bundling import CONFIG_IN_ASSET, LAMBDA_TASK_ROOT, AssetInputs, worker_code
from infra.events import put_events_statement
from infra.secrets import secret_env_name
from infra.worker_policy import S3_PREFIXES, worker_data_statements

HANDLER = "chatbatch.worker.handler.handler"

# arm64 by default (config.worker.architecture): Graviton costs ~20% less per GB-second
# for the same work, and every runtime dependency ships manylinux aarch64 wheels.
ARCHITECTURES = {"arm64": lambda_.Architecture.ARM_64, "x86_64": lambda_.Architecture.X86_64}
# python3.12 by default (config.worker.runtime): an Amazon Linux 2023 runtime supported by
# Lambda into 2028 with wheels for every pinned dependency; 3.13 is allowed by the config.
RUNTIMES = {"3.12": lambda_.Runtime.PYTHON_3_12, "3.13": lambda_.Runtime.PYTHON_3_13}


def logged_role(scope: Construct, description: str) -> tuple[logs.LogGroup, iam.Role]:
    """A function's log group and role, the role allowed to write only that group: an
    explicit role instead of AWSLambdaBasicExecutionRole (logs:* on every group)."""
    log_group = logs.LogGroup(scope, "Logs", retention=logs.RetentionDays.ONE_MONTH)
    role = iam.Role(
        scope,
        "Role",
        assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
        description=description,
    )
    log_group.grant_write(role)
    return log_group, role


def acknowledge_function(
    function: lambda_.Function,
    role: iam.Role,
    *,
    runtime: lambda_.Runtime,
    bucket: s3.IBucket,
    prefixes: tuple[str, ...],
) -> None:
    """The cdk-nag findings every chatbatch function shares, with their reasons: active
    tracing's X-Ray statement, the bucket's per-prefix object statements, the runtime."""
    policy = role.node.find_child("DefaultPolicy")
    bucket_id = Stack.of(function).get_logical_id(cast(CfnElement, bucket.node.default_child))
    Validations.of(policy).acknowledge(
        Acknowledgment(
            id="AwsSolutions-IAM5[Resource::*]",
            reason="X-Ray PutTraceSegments/PutTelemetryRecords support no resource-level "
            "permissions; this statement is the one Lambda active tracing adds.",
        ),
        *(
            Acknowledgment(
                id=f"AwsSolutions-IAM5[Resource::<{bucket_id}.Arn>/{prefix}*]",
                reason=f"Object keys under {prefix} are per batch and job; only the "
                "GetObject/PutObject the function's code calls there, on this one bucket.",
            )
            for prefix in prefixes
        ),
    )
    Validations.of(function).acknowledge(
        Acknowledgment(
            id="AwsSolutions-L1",
            reason=f"{runtime.name} is pinned in chatbatch.toml [worker].runtime and the "
            "asset's compiled wheels are built for exactly that version; it is a supported "
            "Lambda runtime. Move to a newer one by changing that key.",
        )
    )


class Worker(Construct):
    """The function, its log group, least-privilege role and the event source mappings."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: Config,
        asset: AssetInputs,
        cache_root: Path,
        queues: dict[Priority, sqs.Queue],
        table: dynamodb.Table,
        bucket: s3.Bucket,
        secrets: dict[str, secretsmanager.ISecret],
    ) -> None:
        super().__init__(scope, construct_id)
        w = config.worker
        runtime = RUNTIMES[w.runtime]
        # scale.target_jobs_per_s raises the mappings' concurrency and reserves their sum
        # (core/sizing.py); without a target the mappings are as configured, nothing reserved
        sizing = worker_sizing(config)

        self.log_group, self.role = logged_role(self, "chatbatch worker")

        resources = Resources(
            table=table.table_name,
            bucket=bucket.bucket_name,
            queues={p: q.queue_url for p, q in queues.items()},
        )
        # shared with the batch route's gatherer (infra.batch_route): one asset, one env
        self.runtime = runtime
        self.architecture = ARCHITECTURES[w.architecture]
        self.code = worker_code(asset, cache_root, runtime)
        self.environment = {
            CONFIG_ENV: f"{LAMBDA_TASK_ROOT}/{CONFIG_IN_ASSET}",
            **resources.env(),
            **{secret_env_name(name): s.secret_arn for name, s in secrets.items()},
            "POWERTOOLS_SERVICE_NAME": SERVICE_NAME,
            "POWERTOOLS_METRICS_NAMESPACE": METRICS_NAMESPACE,
            "POWERTOOLS_LOG_LEVEL": "INFO",
            # Events and responses hold prompts and answers: never in logs or traces.
            "POWERTOOLS_LOGGER_LOG_EVENT": "false",
            "POWERTOOLS_TRACER_CAPTURE_RESPONSE": "false",
        }

        self.function = lambda_.Function(
            self,
            "Function",
            description="chatbatch worker: SQS jobs -> chat API -> S3",
            runtime=runtime,
            architecture=self.architecture,
            handler=HANDLER,
            code=self.code,
            memory_size=w.memory_mb,
            timeout=Duration.seconds(w.timeout_s),
            environment=self.environment,
            role=self.role,
            log_group=self.log_group,
            tracing=lambda_.Tracing.ACTIVE,
            # The worker re-sends deferred jobs (budget, rate limit) to its own queues with
            # a delay. Lambda's loop detection would drop such a job after ~16 rounds.
            recursive_loop=lambda_.RecursiveLoop.ALLOW,
            reserved_concurrent_executions=sizing.reserved,
        )

        for priority, queue in queues.items():
            queue.grant_send_messages(self.role)
            self.function.add_event_source(
                events.SqsEventSource(
                    queue,
                    batch_size=w.batch_size,
                    max_batching_window=(
                        Duration.seconds(w.batch_window_s) if w.batch_window_s else None
                    ),
                    report_batch_item_failures=True,
                    max_concurrency=sizing.mappings[priority],
                )
            )
        # Table and bucket: only what the worker's code calls (see infra.worker_policy).
        for statement in worker_data_statements(table, bucket):
            self.role.add_to_principal_policy(statement)
        for secret in secrets.values():
            secret.grant_read(self.role)
        if config.events.enabled:  # the Batch Completed event (see infra.events)
            self.role.add_to_principal_policy(put_events_statement(self, config.events.bus))
        # the day's budget spent: the worker switches its mappings off; a schedule resumes
        self.budget_pause = BudgetPause(self, "BudgetPause", function=self.function, role=self.role)

        acknowledge_function(
            self.function, self.role, runtime=runtime, bucket=bucket, prefixes=S3_PREFIXES
        )
