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
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict

from chatbatch.config import Priority

TABLE_PK = "pk"
TABLE_SK = "sk"
TABLE_TTL = "expires_at"

ENV_TABLE = "CHATBATCH_TABLE"
ENV_BUCKET = "CHATBATCH_BUCKET"
ENV_QUEUE_PREFIX = "CHATBATCH_QUEUE_"  # + PRIORITY in upper case, e.g. CHATBATCH_QUEUE_HIGH


def queue_name(stack: str, priority: Priority, *, dlq: bool = False) -> str:
    return f"{stack}-{priority.value}{'-dlq' if dlq else ''}"


class Resources(BaseModel):
    """Where a deployment (or the local runtime) keeps its queues, table and bucket."""

    model_config = ConfigDict(frozen=True)

    table: str
    bucket: str
    queues: dict[Priority, str]  # priority -> queue URL
    dlqs: dict[Priority, str] = {}

    def env(self) -> dict[str, str]:
        """The worker's environment variables for these resources."""
        env = {ENV_TABLE: self.table, ENV_BUCKET: self.bucket}
        env |= {f"{ENV_QUEUE_PREFIX}{p.value.upper()}": url for p, url in self.queues.items()}
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
        return cls(table=environ[ENV_TABLE], bucket=environ[ENV_BUCKET], queues=queues)

    def priority_of_queue(self, queue_arn_or_url: str) -> Priority | None:
        """The priority whose queue this is (an event record carries the queue ARN)."""
        name = queue_arn_or_url.rsplit(":", 1)[-1].rsplit("/", 1)[-1]
        for priority, url in self.queues.items():
            if url.rsplit("/", 1)[-1] == name:
                return priority
        return None
