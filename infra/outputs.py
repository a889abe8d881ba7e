"""CloudFormation output keys of a chatbatch deployment, as plain strings.

The CLI reads ``describe-stacks`` outputs by these keys to find the queues, bucket and
table of a deployed stack (``chatbatch submit ... --stack``). This module must not import
aws_cdk: it is meant to be importable (or moved) where only the runtime package is
installed.
"""

from __future__ import annotations

import re

from chatbatch.config import Priority

BUCKET_NAME = "BucketName"
TABLE_NAME = "TableName"
WORKER_FUNCTION_NAME = "WorkerFunctionName"
ALARM_TOPIC_ARN = "AlarmTopicArn"
DASHBOARD_NAME = "DashboardName"


def _camel(name: str) -> str:
    """``critical`` -> ``Critical``, ``my-gateway`` -> ``MyGateway`` (output keys are alnum)."""
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[^A-Za-z0-9]+", name))


def queue_url_key(priority: Priority) -> str:
    return f"QueueUrl{_camel(priority.value)}"


def dlq_url_key(priority: Priority) -> str:
    return f"DlqUrl{_camel(priority.value)}"


def secret_arn_key(provider: str) -> str:
    """The output holding the ARN of a provider's API-key secret."""
    return f"SecretArn{_camel(provider)}"


# Every output the stack always has; provider secrets add ``secret_arn_key(provider)`` each.
OUTPUT_KEYS: dict[str, str] = {
    "bucket": BUCKET_NAME,
    "table": TABLE_NAME,
    "worker": WORKER_FUNCTION_NAME,
    "alarm_topic": ALARM_TOPIC_ARN,
    "dashboard": DASHBOARD_NAME,
    **{f"queue.{p.value}": queue_url_key(p) for p in Priority},
    **{f"dlq.{p.value}": dlq_url_key(p) for p in Priority},
}
