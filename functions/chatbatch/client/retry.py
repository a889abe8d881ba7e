"""Sending a batch's failed jobs again (``chatbatch retry``), without the user's file.

When a job fails (``failed`` or ``dead_lettered``) and its line was valid, the worker
keeps the SQS message that carried it: ``requests/<batch>/<custom_id>.json``
(``KeptRequest``: the body, a job line or a claim check, and its queue's priority), and
the error's code on the job's item. So the failed jobs of a batch are listed from S3 (the
batch's kept requests), their states and codes read in batches from DynamoDB, and each
chosen job goes through, in this order:

1. ``Batches.retry``: ``failed`` (or ``dead_lettered``) -> ``retrying``, on the condition
   that the job is still in the state and at the retry count read, so two retries racing
   send it once, and a retry working from a stale read never sends a job that ran again.
   The ``failed`` count (or the ``dead_lettered`` gauge) goes down; the job counts again
   when it ends (``status`` shows it queued or running meanwhile).
2. A settled budget reservation left by the failed attempt is dropped, so the new attempt
   reserves its own (a released one is gone already; one still held by a crashed copy is
   taken over when it expires, like any crashed copy's).
3. Its error line moves to ``history/<batch>/<custom_id>/<n>.json`` (n = the job's retry
   count after this one: 1 holds the first attempt's error): ``collect`` sees the job
   unfinished, then its new outcome, never both.
4. The kept message is sent again to its queue, carrying its batch (a line that names no
   batch keeps its batch) as a new copy of the job.

Jobs refused as invalid (at submit they are never sent; a line a worker found invalid
keeps no request) are not retried: their line must be corrected and submitted again.

If a retry stops between 1 and 4 (killed, SQS refused the send), its jobs stay
``retrying`` with no message; ``stuck=True`` sends the jobs in ``retrying`` again. A job
whose message was in fact queued then has two copies, and the budget's one-copy guard
(the reservation names its owner) keeps it to one provider call.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from chatbatch.client.deployment import Deployment
from chatbatch.client.listing import list_keys
from chatbatch.core.config import Priority
from chatbatch.core.jobs import ATTR_BATCH, HASHED_ID_PREFIX, job_ref
from chatbatch.state.batches import RETRY_FROM, BatchInfo, JobRecord, JobState, pick_shard
from chatbatch.state.budget.ledger import reservation_key
from chatbatch.state.ddb import error_code, s
from chatbatch.state.store import KeptRequest, requests_prefix

THREADS = 16
CHUNK = 100  # jobs moved to ``retrying`` before their messages go out
UNKNOWN_CODE = "unknown"  # a failed job whose item holds no code (should not happen)


class RetryInterrupted(RuntimeError):
    """Some jobs were moved to ``retrying`` but their messages could not be sent."""

    def __init__(self, batch_id: str, unsent: int, cause: Exception) -> None:
        self.batch_id, self.unsent = batch_id, unsent
        super().__init__(
            f"{unsent} job(s) of batch {batch_id} were moved to retrying but not sent "
            f"({cause}); run `chatbatch retry {batch_id} --stuck` to send them"
        )


@dataclass
class RetryPlan:
    """The failed jobs of a batch that would be sent again, and the ones that would not."""

    batch_id: str
    jobs: list[JobRecord] = field(default_factory=list)  # chosen, in custom_id order
    by_code: Counter[str] = field(default_factory=Counter)  # of the chosen
    other_codes: Counter[str] = field(default_factory=Counter)  # failed, left out by codes
    retrying: int = 0  # sent again earlier and not finished yet (not chosen unless stuck)
    not_retriable: int = 0  # failed without a kept request: invalid lines
    counter_shards: int = 1  # the batch's, as registered: each retry counts on one at random


@dataclass
class RetryResult:
    sent: int = 0
    skipped: int = 0  # no longer in the state read when their turn came


def code_of(job: JobRecord) -> str:
    return job.error_code or UNKNOWN_CODE


def plan_retry(
    deployment: Deployment, info: BatchInfo, codes: Collection[str] = (), *, stuck: bool = False
) -> RetryPlan:
    """The batch's failed (and dead-lettered) jobs whose last error code is one of
    ``codes`` (any code when empty); with ``stuck``, also the jobs left in ``retrying``."""
    plan = RetryPlan(batch_id=info.batch_id, counter_shards=info.counter_shards)
    kept = 0
    for chunk in _chunks(_kept_ids(deployment, info.batch_id), CHUNK):
        for job in deployment.batches.jobs(info.batch_id, chunk):
            if job.state is JobState.retrying:
                plan.retrying += 1
            elif job.state not in RETRY_FROM:
                continue  # it succeeded since (a redrive, an earlier retry), or was cancelled
            else:
                kept += 1
            eligible = job.state in RETRY_FROM or stuck
            if eligible and (not codes or code_of(job) in codes):
                plan.jobs.append(job)
                plan.by_code[code_of(job)] += 1
            elif job.state in RETRY_FROM:
                plan.other_codes[code_of(job)] += 1
    plan.not_retriable = max(0, info.failed + info.dead_lettered - kept)
    return plan


def send_retries(
    deployment: Deployment, plan: RetryPlan, on_done: Callable[[int], None] = lambda n: None
) -> RetryResult:
    """Move each chosen job to ``retrying``, file its error in its history and send it
    again (the module docstring); ``on_done`` is told how many jobs each step finished."""
    result = RetryResult()
    with ThreadPoolExecutor(THREADS) as pool:
        for chunk in _chunks(iter(plan.jobs), CHUNK):
            ready = list(pool.map(lambda job: _prepare(deployment, plan, job), chunk))
            messages = [kept for kept in ready if kept is not None]
            result.skipped += len(ready) - len(messages)
            on_done(len(ready) - len(messages))
            sent = 0
            try:
                for priority, group in _by_priority(messages):
                    _send(deployment, priority, group)
                    sent += len(group)
                    on_done(len(group))
            except (ClientError, RuntimeError) as err:
                raise RetryInterrupted(plan.batch_id, len(messages) - sent, err) from err
            finally:
                result.sent += sent
    return result


def _kept_ids(deployment: Deployment, batch_id: str) -> Iterator[str]:
    """The custom_ids of the batch's kept requests. A key's name is the job's ``id_key``:
    the custom_id itself, or its hash, when the kept request names the custom_id."""
    prefix = requests_prefix(batch_id)
    for key in list_keys(deployment.s3, deployment.resources.bucket, prefix):
        name = key.removeprefix(prefix).removesuffix(".json")
        if not name.startswith(HASHED_ID_PREFIX):
            yield name
        elif (text := deployment.store.get_text(key)) is not None:
            yield KeptRequest.model_validate_json(text).custom_id


def _chunks(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _prepare(deployment: Deployment, plan: RetryPlan, job: JobRecord) -> KeptRequest | None:
    """Steps 1 to 3 for one job: its kept message, or None when another retry (or a
    delivery) moved the job first."""
    kept = deployment.store.get_request(plan.batch_id, job.custom_id)
    shard = pick_shard(plan.counter_shards)
    if kept is None or not deployment.batches.retry(plan.batch_id, job, shard):
        return None
    _drop_settled_reservation(deployment, plan.batch_id, job.custom_id)
    deployment.store.move_error_to_history(plan.batch_id, job.custom_id, job.retries + 1)
    return kept


def _drop_settled_reservation(deployment: Deployment, batch_id: str, custom_id: str) -> None:
    """A settled reservation would make the new attempt's copy stop as ``AlreadySettled``
    (paid already): the failed attempt's is dropped (its money stays in the ledgers)."""
    job_key = job_ref(batch_id, custom_id)  # the worker's ``invocation.job_key``
    try:
        deployment.ddb.delete_item(
            TableName=deployment.resources.table,
            Key=reservation_key(job_key),
            ConditionExpression="#s = :settled",
            ExpressionAttributeNames={"#s": "state"},
            ExpressionAttributeValues={":settled": s("settled")},
        )
    except ClientError as err:  # by code: see ``transact`` in ``state.ddb`` for why
        if error_code(err) != "ConditionalCheckFailedException":
            raise
        # none left (released when the job failed), or held by a copy still at work: kept


def _by_priority(messages: list[KeptRequest]) -> Iterator[tuple[Priority, list[KeptRequest]]]:
    for priority in Priority:
        group = [m for m in messages if m.priority is priority]
        for start in range(0, len(group), 10):
            yield priority, group[start : start + 10]


def _send(deployment: Deployment, priority: Priority, group: list[KeptRequest]) -> None:
    entries: list[Any] = [
        {
            "Id": str(i),
            "MessageBody": kept.body,
            "MessageAttributes": {ATTR_BATCH: {"DataType": "String", "StringValue": kept.batch_id}},
        }
        for i, kept in enumerate(group)
    ]
    reply = deployment.sqs.send_message_batch(
        QueueUrl=deployment.resources.queues[priority], Entries=entries
    )
    if failed := reply.get("Failed"):
        raise RuntimeError(f"SQS refused {len(failed)} message(s): {failed[0].get('Message')}")
