"""CloudWatch dashboard and alarms, built on the worker's metric contract.

What the worker emits, with which unit and dimensions, is ``chatbatch.core.metrics``
(read here and by the worker's EMF output). The dashboard finds per-job metrics with
SEARCH expressions (so new models appear without a redeploy); the alarms use the
service-level metrics, the queues' and the function's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from aws_cdk import Aws, Duration
from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from chatbatch.core.config import Config, Priority
from chatbatch.core.metrics import (
    METRICS,
    SERVICE_DIMENSION,
    Metric,
)
from chatbatch.core.metrics import NAMESPACE as METRICS_NAMESPACE
from chatbatch.core.metrics import SERVICE as SERVICE_NAME

if TYPE_CHECKING:
    from infra.batch_route import BatchRoute

BUDGET_ALARM_FRACTION = 0.8
JOB_ERROR_RATE_PERCENT = 10
WORKER_ERROR_RATE_PERCENT = 5
# Alarm while three quarters of the retention are still left to act before jobs expire.
OLDEST_AGE_FRACTION_OF_RETENTION = 0.25
PERIOD = Duration.minutes(5)


def service_metric(name: Metric, *, statistic: str = "Sum", period: Duration = PERIOD) -> cw.Metric:
    if not METRICS[name].service_level:
        raise ValueError(f"{name} is not emitted at service level")
    return cw.Metric(
        namespace=METRICS_NAMESPACE,
        metric_name=name.value,
        dimensions_map={SERVICE_DIMENSION: SERVICE_NAME},
        statistic=statistic,
        period=period,
    )


def _search(name: Metric, statistic: str, extra: str = "") -> str:
    term = f'Namespace="{METRICS_NAMESPACE}" MetricName="{name.value}" {extra}'.strip()
    return f"SEARCH('{term}', '{statistic}', {int(PERIOD.to_seconds())})"


def per_priority(name: Metric, priority: Priority) -> cw.MathExpression:
    """A per-job metric summed over models, for one priority."""
    only = f'priority="{priority.value}"'
    return cw.MathExpression(
        expression=f"SUM({_search(name, 'Sum', only)})",
        using_metrics={},
        label=priority.value,
        period=PERIOD,
    )


def per_model_and_priority(name: Metric, statistic: str) -> cw.MathExpression:
    """One line per model x priority (percentiles cannot be summed)."""
    if METRICS[name].service_level:  # the search would also find the service-level series
        raise ValueError(f"{name} is also emitted at service level; filter by priority")
    return cw.MathExpression(
        expression=_search(name, statistic),
        using_metrics={},
        label="",
        period=PERIOD,
    )


def alarm_publish_statement(topic: sns.ITopic, stack: str) -> iam.PolicyStatement:
    """CloudWatch may publish to ``topic``, for this account's alarms of this stack only."""
    return iam.PolicyStatement(
        sid="AllowCloudWatchAlarms",
        principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
        actions=["sns:Publish"],
        resources=[topic.topic_arn],
        conditions={
            "StringEquals": {"aws:SourceAccount": Aws.ACCOUNT_ID},
            "ArnLike": {
                "aws:SourceArn": f"arn:{Aws.PARTITION}:cloudwatch:{Aws.REGION}:{Aws.ACCOUNT_ID}"
                f":alarm:{stack}-*"
            },
        },
    )


class Monitoring(Construct):
    """Dashboard, alarms and the SNS topic the alarms notify."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: Config,
        function: lambda_.Function,
        queues: dict[Priority, sqs.Queue],
        dlqs: dict[Priority, sqs.Queue],
        batch_route: BatchRoute | None = None,
        alarm_email: str | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        stack = config.stack_name
        # No KMS key on the topic: notifications carry alarm names and metric values, no
        # job data, and CloudWatch cannot publish to a topic under the aws/sns managed key.
        self.topic = sns.Topic(self, "AlarmTopic", display_name=f"{stack} alarms", enforce_ssl=True)
        # enforce_ssl writes a topic policy that replaces SNS's default one; without an
        # Allow for CloudWatch next to its Deny, alarm notifications are silently dropped.
        self.topic.add_to_resource_policy(alarm_publish_statement(self.topic, stack))
        if alarm_email:
            self.topic.add_subscription(subscriptions.EmailSubscription(alarm_email))
        action = cw_actions.SnsAction(self.topic)
        self.alarms: dict[str, cw.Alarm] = {}

        def alarm(key: str, alarm: cw.Alarm) -> cw.Alarm:
            alarm.add_alarm_action(action)
            alarm.add_ok_action(action)
            self.alarms[key] = alarm
            return alarm

        for priority, dlq in dlqs.items():
            alarm(
                f"dlq-{priority.value}",
                dlq.metric_approximate_number_of_messages_visible(
                    period=PERIOD, statistic="Maximum"
                ).create_alarm(
                    self,
                    f"Dlq{priority.value.capitalize()}Alarm",
                    alarm_name=f"{stack}-dlq-{priority.value}",
                    alarm_description=f"A {priority.value} job is in its dead-letter queue: "
                    "inspect it, fix the cause, redrive it.",
                    threshold=1,
                    evaluation_periods=1,
                    comparison_operator=cw.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
                    treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
                ),
            )

        oldest_s = int(
            Duration.days(config.worker.retention_days).to_seconds()
            * OLDEST_AGE_FRACTION_OF_RETENTION
        )
        for priority, queue in queues.items():
            alarm(
                f"age-{priority.value}",
                queue.metric_approximate_age_of_oldest_message(
                    period=PERIOD, statistic="Maximum"
                ).create_alarm(
                    self,
                    f"Age{priority.value.capitalize()}Alarm",
                    alarm_name=f"{stack}-oldest-{priority.value}",
                    alarm_description=f"A {priority.value} job has waited {oldest_s // 3600} h; "
                    f"jobs expire after {config.worker.retention_days} days in the queue.",
                    threshold=oldest_s,
                    evaluation_periods=1,
                    comparison_operator=cw.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
                    treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
                ),
            )

        daily = float(config.budget.daily_usd)
        cost_today = service_metric(Metric.COST_USD, period=Duration.days(1))
        alarm(
            "budget",
            cost_today.create_alarm(
                self,
                "BudgetAlarm",
                alarm_name=f"{stack}-budget",
                alarm_description=f"Spend over the last 24 h reached "
                f"{BUDGET_ALARM_FRACTION:.0%} of the daily budget (USD {daily:g}); the worker "
                "defers jobs once the UTC day's budget is used up.",
                threshold=round(BUDGET_ALARM_FRACTION * daily, 6),
                evaluation_periods=1,
                comparison_operator=cw.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
                treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
            ),
        )

        alarm(
            "paused",
            service_metric(Metric.JOBS_PAUSED).create_alarm(
                self,
                "PausedAlarm",
                alarm_name=f"{stack}-paused",
                alarm_description="Jobs are paused: the provider answered with an account-level "
                "error (wrong key, no access, no such model, quota or credit used up). "
                "`chatbatch status` says which model, why and since when; fix the account, then "
                "`chatbatch resume` (or wait for the probe, one request per minute).",
                threshold=1,
                evaluation_periods=1,
                comparison_operator=cw.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
                treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
            ),
        )

        job_error_rate = cw.MathExpression(
            expression="100 * FILL(failed, 0) / (FILL(failed, 0) + FILL(succeeded, 0))",
            using_metrics={
                "failed": service_metric(Metric.JOBS_FAILED),
                "succeeded": service_metric(Metric.JOBS_SUCCEEDED),
            },
            label="job error rate (%)",
            period=PERIOD,
        )
        alarm(
            "job-errors",
            job_error_rate.create_alarm(
                self,
                "JobErrorRateAlarm",
                alarm_name=f"{stack}-job-error-rate",
                alarm_description=f"At least {JOB_ERROR_RATE_PERCENT}% of jobs ended with an "
                "error record for 15 minutes (bad input, provider errors, retries exhausted).",
                threshold=JOB_ERROR_RATE_PERCENT,
                evaluation_periods=3,
                comparison_operator=cw.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
                treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
            ),
        )
        worker_error_rate = cw.MathExpression(
            expression="100 * errors / invocations",
            using_metrics={
                "errors": function.metric_errors(period=PERIOD, statistic="Sum"),
                "invocations": function.metric_invocations(period=PERIOD, statistic="Sum"),
            },
            label="worker invocation error rate (%)",
            period=PERIOD,
        )
        alarm(
            "worker-errors",
            worker_error_rate.create_alarm(
                self,
                "WorkerErrorRateAlarm",
                alarm_name=f"{stack}-worker-error-rate",
                alarm_description=f"At least {WORKER_ERROR_RATE_PERCENT}% of worker invocations "
                "failed as a whole (crash or timeout: the whole batch is retried) for 15 minutes.",
                threshold=WORKER_ERROR_RATE_PERCENT,
                evaluation_periods=3,
                comparison_operator=cw.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
                treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
            ),
        )

        if batch_route is not None:
            self._batch_route_alarms(stack, batch_route, alarm)

        self.dashboard = cw.Dashboard(
            self,
            "Dashboard",
            dashboard_name=f"{stack}-{Aws.REGION}",
            default_interval=Duration.hours(3),
        )
        self._widgets(
            config=config,
            function=function,
            queues=queues,
            dlqs=dlqs,
            cost_today=cost_today,
            daily=daily,
            batch_route=batch_route,
        )

    def _batch_route_alarms(
        self, stack: str, route: BatchRoute, alarm: Callable[[str, cw.Alarm], cw.Alarm]
    ) -> None:
        """The gatherer failed; a routed job gave up in the batch DLQ; a provider batch is
        open past its deadline (a gauge each run emits: its maximum); a provider batch
        failed or was cancelled (a count: its sum)."""
        at_least_one = {
            "threshold": 1,
            "evaluation_periods": 1,
            "comparison_operator": cw.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            "treat_missing_data": cw.TreatMissingData.NOT_BREACHING,
        }
        watched: list[tuple[str, str, cw.IMetric, str]] = [
            (
                "gatherer-errors",
                "GathererErrorsAlarm",
                route.function.metric_errors(period=PERIOD, statistic="Sum"),
                "A gatherer run failed (crash or timeout); the next run, minutes later, "
                "resumes from what the failed one wrote. Its log group says why.",
            ),
            (
                "dlq-batch",
                "DlqBatchAlarm",
                route.dlq.metric_approximate_number_of_messages_visible(
                    period=PERIOD, statistic="Maximum"
                ),
                "A batch-routed job is in the batch route's dead-letter queue: inspect it, "
                "fix the cause, redrive it.",
            ),
            (
                "batch-overdue",
                "BatchOverdueAlarm",
                service_metric(Metric.BATCH_ROUTE_OVERDUE, statistic="Maximum"),
                "A provider batch is still open past its deadline: "
                f"{METRICS[Metric.BATCH_ROUTE_OVERDUE].meaning}.",
            ),
            (
                "batch-failed",
                "BatchFailedAlarm",
                service_metric(Metric.BATCH_ROUTE_FAILED),
                "A provider batch failed or was cancelled; its jobs went back to the "
                "synchronous path where their deadline allows, else failed (batch_expired).",
            ),
        ]
        for key, construct_id, metric, description in watched:
            alarm(
                key,
                metric.create_alarm(
                    self,
                    construct_id,
                    alarm_name=f"{stack}-{key}",
                    alarm_description=description,
                    **at_least_one,
                ),
            )

    def _widgets(
        self,
        *,
        config: Config,
        function: lambda_.Function,
        queues: dict[Priority, sqs.Queue],
        dlqs: dict[Priority, sqs.Queue],
        cost_today: cw.Metric,
        daily: float,
        batch_route: BatchRoute | None,
    ) -> None:
        def by_priority(title: str, name: Metric) -> cw.GraphWidget:
            return cw.GraphWidget(
                title=title, left=[per_priority(name, p) for p in Priority], width=8, height=6
            )

        def lines(title: str, metrics: list[cw.IMetric], width: int = 8) -> cw.GraphWidget:
            return cw.GraphWidget(title=title, left=metrics, width=width, height=6)

        budget_used = cw.MathExpression(
            expression=f"100 * cost / {daily:g}",
            using_metrics={"cost": cost_today},
            label="budget used today, UTC (%)",
            period=Duration.days(1),
        )
        d = self.dashboard
        d.add_widgets(
            cw.TextWidget(
                markdown=f"# {config.stack_name}\nJobs, provider behaviour, spend and queues. "
                f"Daily budget USD {daily:g}; metrics in namespace `{METRICS_NAMESPACE}`.",
                width=24,
                height=2,
            )
        )
        d.add_widgets(
            by_priority("Jobs succeeded per priority", Metric.JOBS_SUCCEEDED),
            lines(
                "Jobs failed and dead-lettered per priority",
                [
                    *(
                        _relabel(per_priority(Metric.JOBS_FAILED, p), f"failed {p}")
                        for p in Priority
                    ),
                    *(
                        _relabel(per_priority(Metric.JOBS_DEAD_LETTERED, p), f"dead-lettered {p}")
                        for p in Priority
                    ),
                ],
            ),
            lines(
                "Deferred (budget), throttled (rate limit), paused (account error)",
                [
                    *(
                        _relabel(per_priority(Metric.JOBS_PAUSED, p), f"paused {p}")
                        for p in Priority
                    ),
                    *(
                        _relabel(per_priority(Metric.JOBS_DEFERRED, p), f"deferred {p}")
                        for p in Priority
                    ),
                    *(
                        _relabel(per_priority(Metric.JOBS_THROTTLED, p), f"throttled {p}")
                        for p in Priority
                    ),
                ],
            ),
        )
        d.add_widgets(
            lines("Latency p50 (ms)", [per_model_and_priority(Metric.LATENCY, "p50")]),
            lines("Latency p99 (ms)", [per_model_and_priority(Metric.LATENCY, "p99")]),
            lines(
                "Provider 429s, retries and errors; calls saved by the cache; calls booked "
                "at their worst case (no usage read); messages refused for their sender",
                [
                    per_model_and_priority(Metric.PROVIDER_RATE_LIMITED, "Sum"),
                    per_model_and_priority(Metric.RETRIES, "Sum"),
                    per_model_and_priority(Metric.PROVIDER_ERRORS, "Sum"),
                    per_model_and_priority(Metric.CACHE_HITS, "Sum"),
                    per_model_and_priority(Metric.ESTIMATED_CALLS, "Sum"),
                    service_metric(Metric.MESSAGES_REFUSED),
                ],
            ),
        )
        d.add_widgets(
            lines(
                "Cost per hour (USD)",
                [service_metric(Metric.COST_USD, period=Duration.hours(1))],
            ),
            cw.SingleValueWidget(
                title="Budget used today (UTC)", metrics=[budget_used], width=8, height=6
            ),
            cw.AlarmWidget(
                title="Spend vs budget alarm (24 h)", alarm=self.alarms["budget"], width=8
            ),
        )
        d.add_widgets(
            lines(
                "Queue depth (visible)",
                [
                    q.metric_approximate_number_of_messages_visible(
                        period=PERIOD, statistic="Maximum", label=p.value
                    )
                    for p, q in queues.items()
                ],
            ),
            lines(
                "Oldest message age (s)",
                [
                    q.metric_approximate_age_of_oldest_message(
                        period=PERIOD, statistic="Maximum", label=p.value
                    )
                    for p, q in queues.items()
                ],
            ),
            lines(
                "Dead-letter queue depth",
                [
                    q.metric_approximate_number_of_messages_visible(
                        period=PERIOD, statistic="Maximum", label=p.value
                    )
                    for p, q in dlqs.items()
                ],
            ),
        )
        d.add_widgets(
            lines(
                "Worker invocations and errors",
                [
                    function.metric_invocations(period=PERIOD, statistic="Sum"),
                    function.metric_errors(period=PERIOD, statistic="Sum"),
                    function.metric_throttles(period=PERIOD, statistic="Sum"),
                ],
            ),
            lines(
                "Worker duration (ms)",
                [
                    function.metric_duration(period=PERIOD, statistic="p50"),
                    function.metric_duration(period=PERIOD, statistic="p99"),
                ],
            ),
            lines(
                "Tokens per model and priority",
                [
                    per_model_and_priority(Metric.PROMPT_TOKENS, "Sum"),
                    per_model_and_priority(Metric.COMPLETION_TOKENS, "Sum"),
                ],
            ),
        )
        if batch_route is not None:
            d.add_widgets(*_batch_route_widgets(batch_route, lines))
        d.add_widgets(
            cw.AlarmStatusWidget(
                title="Alarms", alarms=list(self.alarms.values()), width=24, height=4
            )
        )


def _batch_route_widgets(
    route: BatchRoute, lines: Callable[[str, list[cw.IMetric]], cw.GraphWidget]
) -> list[cw.IWidget]:
    """The batch route's row: its queue's depth, the jobs batched (sent to its queue by
    ``submit``, taken off it by the gatherer), its provider batches' trouble, its runs."""
    queue, dlq, function = route.queue, route.dlq, route.function
    return [
        lines(
            "Batch route queue depth (visible)",
            [
                queue.metric_approximate_number_of_messages_visible(
                    period=PERIOD, statistic="Maximum", label="batch queue"
                ),
                dlq.metric_approximate_number_of_messages_visible(
                    period=PERIOD, statistic="Maximum", label="batch dead-letter queue"
                ),
            ],
        ),
        lines(
            "Jobs batched: routed to the batch queue, taken into provider batches",
            [
                queue.metric_number_of_messages_sent(
                    period=PERIOD, statistic="Sum", label="routed (sent by submit)"
                ),
                queue.metric_number_of_messages_deleted(
                    period=PERIOD, statistic="Sum", label="gathered (deleted by the gatherer)"
                ),
            ],
        ),
        lines(
            "Provider batches overdue and failed; gatherer runs",
            [
                service_metric(Metric.BATCH_ROUTE_OVERDUE, statistic="Maximum"),
                service_metric(Metric.BATCH_ROUTE_FAILED),
                function.metric_invocations(period=PERIOD, statistic="Sum"),
                function.metric_errors(period=PERIOD, statistic="Sum"),
            ],
        ),
    ]


def _relabel(expression: cw.MathExpression, label: str) -> cw.MathExpression:
    return expression.with_(label=label)
