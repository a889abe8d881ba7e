"""CloudFormation output keys of a chatbatch deployment, as plain strings.

The CLI reads ``describe-stacks`` outputs by these keys to find the queues, bucket and
table of a deployed stack (``chatbatch submit ... --stack``). The keys live in
``chatbatch.core.resources`` (the CLI must not import ``infra``); this module re-exports them
for the stack and must not import aws_cdk.
"""

from __future__ import annotations

from chatbatch.core.resources import (
    ALARM_TOPIC_ARN,
    BATCH_DLQ_URL,
    BATCH_QUEUE_URL,
    BUCKET_NAME,
    COSTS_QUERY_POLICY_ARN,
    COSTS_WORKGROUP,
    DASHBOARD_NAME,
    GATHERER_FUNCTION_NAME,
    OUTPUT_KEYS,
    TABLE_NAME,
    WORKER_FUNCTION_NAME,
    dlq_url_key,
    queue_url_key,
    secret_arn_key,
)

__all__ = [
    "ALARM_TOPIC_ARN",
    "BATCH_DLQ_URL",
    "BATCH_QUEUE_URL",
    "BUCKET_NAME",
    "COSTS_QUERY_POLICY_ARN",
    "COSTS_WORKGROUP",
    "DASHBOARD_NAME",
    "GATHERER_FUNCTION_NAME",
    "OUTPUT_KEYS",
    "TABLE_NAME",
    "WORKER_FUNCTION_NAME",
    "dlq_url_key",
    "queue_url_key",
    "secret_arn_key",
]
