"""Names of the AWS resources, shared by the CDK stack, the worker, the CLI and `local`.

One DynamoDB table holds every piece of shared state (single-table design): limiter
buckets, budget ledgers and reservations, batch counters, idempotency records and the
response cache index. Items are keyed by string ``pk`` / ``sk``; items that should go away
carry ``expires_at`` (epoch seconds), the table's TTL attribute.

The worker learns the names from its environment (set by the stack; set by the local
runtime for moto).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict

from chatbatch.core.config import Priority

TABLE_PK = "pk"
TABLE_SK = "sk"
# the daily-limit override an operator stores; the worker may read it, never write it
LIMITS_PK = "budget#limits"
TABLE_TTL = "expires_at"

ENV_TABLE = "CHATBATCH_TABLE"
ENV_BUCKET = "CHATBATCH_BUCKET"
ENV_QUEUE_PREFIX = "CHATBATCH_QUEUE_"  # + PRIORITY in upper case, e.g. CHATBATCH_QUEUE_HIGH
# which switch turns the queues' consumers off and on (``chatbatch.state.queue_switch``):
# ``table`` (the local runtime) or ``lambda:FUNCTION`` (a deployment's event source mappings)
ENV_QUEUE_SWITCH = "CHATBATCH_QUEUE_SWITCH"
# principal ids (comma-separated) whose messages the worker takes as its own: the
# gatherer's role, which sends jobs back to the priority queues (``worker/producers.py``)
ENV_TRUSTED_SENDERS = "CHATBATCH_TRUSTED_SENDERS"
# the event the resume schedule sends the worker function (EventBridge, every hour at :00)
RESUME_EVENT = {"chatbatch": "resume-budget"}

# --- The batch route (issue 17, docs/batch-route.md) ------------------------------------
# Jobs routed to the providers' batch APIs wait on one more queue, read by no event source
# mapping: the gatherer function receives from it on a schedule.
ENV_BATCH_QUEUE = "CHATBATCH_BATCH_QUEUE"  # the batch queue's URL (the gatherer's env)
# the event the gather schedule sends the gatherer function (EventBridge, GATHER_EVERY_MIN)
# The batch queue's deliveries before its DLQ: the gatherer only receives, deletes or sends
# a job again, so a message's count grows only with runs that died holding it (a run that
# timed out with parts left); the priority queues' max_receive_count (5) would dead-letter
# jobs whose work simply never reached a part. A message that kills every run still ends
# in the DLQ (alarmed; ``chatbatch redrive --priority batch``).
BATCH_MAX_RECEIVES = 100
GATHER_EVENT = {"chatbatch": "gather"}
# a gather run's limit: Lambda's maximum, since a run may read a 200 MB provider output
# file; the batch queue's visibility timeout outlasts it, so a run's messages stay hidden
GATHER_TIMEOUT_S = 900
GATHER_EVERY_MIN = 5  # how often the gatherer runs (a provider batch takes up to 24 h)


def queue_name(stack: str, priority: Priority, *, dlq: bool = False) -> str:
    return f"{stack}-{priority.value}{'-dlq' if dlq else ''}"


def batch_queue_name(stack: str, *, dlq: bool = False) -> str:
    """The batch route's queue (or its DLQ): ``chatbatch-batch``, ``chatbatch-batch-dlq``."""
    return f"{stack}-batch{'-dlq' if dlq else ''}"


class Resources(BaseModel):
    """Where a deployment (or the local runtime) keeps its queues, table and bucket."""

    model_config = ConfigDict(frozen=True)

    table: str
    bucket: str
    queues: dict[Priority, str]  # priority -> queue URL
    dlqs: dict[Priority, str] = {}
    # the queues' switch (``ENV_QUEUE_SWITCH``); None: the worker's own function's mappings
    queue_switch: str | None = None
    # the batch route's queue and DLQ (URLs); None: a deployment from before the route
    batch_queue: str | None = None
    batch_dlq: str | None = None

    def env(self) -> dict[str, str]:
        """The worker's environment variables for these resources."""
        env = {ENV_TABLE: self.table, ENV_BUCKET: self.bucket}
        if self.queue_switch:
            env[ENV_QUEUE_SWITCH] = self.queue_switch
        env |= {f"{ENV_QUEUE_PREFIX}{p.value.upper()}": url for p, url in self.queues.items()}
        if self.batch_queue:
            env[ENV_BATCH_QUEUE] = self.batch_queue
        return env

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Resources:
        environ = os.environ if environ is None else environ
        missing = [k for k in (ENV_TABLE, ENV_BUCKET) if not environ.get(k)]
        if missing:
            raise RuntimeError(f"environment variables not set: {', '.join(missing)}")
        queues = {
            p: environ[f"{ENV_QUEUE_PREFIX}{p.value.upper()}"]
            for p in Priority
            if environ.get(f"{ENV_QUEUE_PREFIX}{p.value.upper()}")
        }
        return cls(
            table=environ[ENV_TABLE],
            bucket=environ[ENV_BUCKET],
            queues=queues,
            batch_queue=environ.get(ENV_BATCH_QUEUE) or None,
        )

    def priority_of_queue(self, queue_arn_or_url: str) -> Priority | None:
        """The priority whose queue this is (an event record carries the queue ARN); None
        for any other queue, the batch route's included (its jobs have no priority queue
        to be delivered from)."""
        name = queue_arn_or_url.rsplit(":", 1)[-1].rsplit("/", 1)[-1]
        for priority, url in self.queues.items():
            if url.rsplit("/", 1)[-1] == name:
                return priority
        return None


# --- Stack outputs ---------------------------------------------------------------------
# The CloudFormation output keys of a deployment (the CDK stack publishes them; the CLI
# reads them with DescribeStacks; ``chatbatch local up`` registers a stack in moto with the
# same keys). ``infra.outputs`` re-exports these names.

BUCKET_NAME = "BucketName"
TABLE_NAME = "TableName"
WORKER_FUNCTION_NAME = "WorkerFunctionName"
ALARM_TOPIC_ARN = "AlarmTopicArn"
DASHBOARD_NAME = "DashboardName"
COSTS_WORKGROUP = "CostsWorkGroup"  # the Athena workgroup of `costs --athena`
COSTS_QUERY_POLICY_ARN = "CostsQueryPolicyArn"  # what a user of `costs --athena` needs
QUEUE_SWITCH = "QueueSwitch"  # published by a local stack only: its switch is ``table``
BATCH_QUEUE_URL = "BatchQueueUrl"  # a stack from before the batch route has none
BATCH_DLQ_URL = "BatchDlqUrl"
GATHERER_FUNCTION_NAME = "GathererFunctionName"


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
    "costs_workgroup": COSTS_WORKGROUP,
    "costs_query_policy": COSTS_QUERY_POLICY_ARN,
    "batch_queue": BATCH_QUEUE_URL,
    "batch_dlq": BATCH_DLQ_URL,
    "gatherer": GATHERER_FUNCTION_NAME,
    **{f"queue.{p.value}": queue_url_key(p) for p in Priority},
    **{f"dlq.{p.value}": dlq_url_key(p) for p in Priority},
}


class MissingOutputs(ValueError):
    """A stack without the outputs a chatbatch deployment publishes."""


def resources_from_outputs(outputs: Mapping[str, str]) -> Resources:
    """The resources named by a stack's outputs (``OutputKey -> OutputValue``). The batch
    route's queues are optional: a stack deployed before the route has none."""
    needed = [TABLE_NAME, BUCKET_NAME, *(queue_url_key(p) for p in Priority)]
    missing = [key for key in needed if not outputs.get(key)]
    if missing:
        raise MissingOutputs(f"outputs missing: {', '.join(missing)}")
    return Resources(
        table=outputs[TABLE_NAME],
        bucket=outputs[BUCKET_NAME],
        queues={p: outputs[queue_url_key(p)] for p in Priority},
        dlqs={p: outputs[dlq_url_key(p)] for p in Priority if outputs.get(dlq_url_key(p))},
        queue_switch=_switch_of(outputs),
        batch_queue=outputs.get(BATCH_QUEUE_URL) or None,
        batch_dlq=outputs.get(BATCH_DLQ_URL) or None,
    )


def _switch_of(outputs: Mapping[str, str]) -> str | None:
    """A local stack's switch, else the deployed worker function's mappings."""
    if outputs.get(QUEUE_SWITCH):
        return outputs[QUEUE_SWITCH]
    worker = outputs.get(WORKER_FUNCTION_NAME)
    return f"lambda:{worker}" if worker else None


def resources_to_outputs(resources: Resources) -> dict[str, str]:
    """The inverse of ``resources_from_outputs`` (what a local stack publishes)."""
    outputs = {TABLE_NAME: resources.table, BUCKET_NAME: resources.bucket}
    outputs |= {queue_url_key(p): url for p, url in resources.queues.items()}
    outputs |= {dlq_url_key(p): url for p, url in resources.dlqs.items()}
    if resources.queue_switch:
        outputs[QUEUE_SWITCH] = resources.queue_switch
    if resources.batch_queue:
        outputs[BATCH_QUEUE_URL] = resources.batch_queue
    if resources.batch_dlq:
        outputs[BATCH_DLQ_URL] = resources.batch_dlq
    return outputs


# --- Athena over the cost records ------------------------------------------------------
# The stack's Glue database and table over ``costs/`` and the Athena workgroup that
# queries them (``chatbatch costs --athena``): named from the stack, so the CLI finds them
# without an output. A Glue database name holds lower-case letters, digits and ``_``.

COSTS_TABLE = "cost_records"
ATHENA_RESULTS_PREFIX = "athena-results/"  # the workgroup's query results, in the bucket


def costs_database(stack: str) -> str:
    """``chatbatch-prod`` -> ``chatbatch_prod_costs``."""
    return re.sub(r"[^a-z0-9_]", "_", stack.lower()) + "_costs"


def costs_workgroup(stack: str) -> str:
    return f"{stack}-costs"
