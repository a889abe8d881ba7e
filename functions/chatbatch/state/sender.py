"""Sending jobs to the pipeline's queues (``Sender``): their priority's queue, or the
batch route's (``BATCH_LANE``), 10 per SendMessageBatch, a job over ``SQS_MAX_BYTES``
written to S3 and sent as a claim check. What ``submit`` sends, and what the gatherer
sends back (a job to the synchronous path, a job to wait for budget)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Literal

from chatbatch.core.config import Priority
from chatbatch.core.jobs import CLAIM_CHECK_KEY, SQS_MAX_BYTES, ClaimCheck, Job
from chatbatch.core.resources import Resources
from chatbatch.state.store import Store

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

# where a job goes: its priority's queue, or the batch route's
BATCH_LANE: Literal["batch"] = "batch"
Lane = Priority | Literal["batch"]
NO_BATCH_ROUTE = (
    "this deployment has no batch route: redeploy with `cdk deploy`, or submit with --route sync"
)


class NoBatchRoute(RuntimeError):
    """Jobs are routed to batch, and the deployment has no batch queue."""


class Sender:
    """Sends jobs to their queues (their priority's, or the batch route's), 10 per call,
    claim-checking big ones."""

    def __init__(self, sqs: SQSClient, store: Store, resources: Resources) -> None:
        self._sqs = sqs
        self._store = store
        self._resources = resources

    def body(self, job: Job) -> str:
        line = job.to_line()
        if len(line.encode()) <= SQS_MAX_BYTES - 1024:
            return line
        assert job.batch_id is not None
        key = self._store.put_claim(job.batch_id, job.custom_id, line)
        claim = ClaimCheck(
            bucket=self._store.bucket, key=key, custom_id=job.custom_id, batch_id=job.batch_id
        )
        return json.dumps({CLAIM_CHECK_KEY: claim.model_dump()})

    def queue_url(self, lane: Lane) -> str:
        if lane != BATCH_LANE:
            return self._resources.queues[lane]
        if self._resources.batch_queue is None:
            raise NoBatchRoute(NO_BATCH_ROUTE)
        return self._resources.batch_queue

    def send(self, lane: Lane, jobs: list[Job], delay_s: int = 0) -> int:
        """Send up to 10 jobs of one priority (or of the batch route), visible after
        ``delay_s``; returns how many were sent."""
        entries = [
            {"Id": str(i), "MessageBody": self.body(job), "DelaySeconds": delay_s}
            for i, job in enumerate(jobs)
        ]
        reply = self._sqs.send_message_batch(
            QueueUrl=self.queue_url(lane),
            Entries=entries,  # type: ignore[arg-type]
        )
        failed = reply.get("Failed", [])
        if failed:
            raise RuntimeError(f"SQS refused {len(failed)} message(s): {failed[0].get('Message')}")
        return len(entries)
