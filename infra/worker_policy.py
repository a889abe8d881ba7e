"""The worker role's table and bucket permissions: one statement per action, from the code.

Every AWS data call the worker makes (``functions/chatbatch/worker`` and what it calls in
``chatbatch.state`` and ``chatbatch.provider``), read from the code:

DynamoDB, the one state table:

- ``GetItem``: ``Budget.daily_limit_nanos`` (reads ``budget#limits``),
  ``Budget._reclaim``; ``RateLimiter`` (a shard's state);
  ``Breakers.get``
- ``BatchGetItem``: ``Batches.prefetch`` (``_get_many``)
- ``Query``: ``Budget._expired`` (expired reservations, reclaimed when reserving)
- ``UpdateItem``: ``Budget.arm``; ``RateLimiter`` (lease, observed limits);
  ``Breakers.open``, ``claim_probe``; the ``Update`` items of the transactions below
- ``DeleteItem``: ``Breakers.close``; the ``Delete`` items of settle and release
- ``PutItem``: only the ``Put`` items of reserve (a reservation and its open marker)
- ``TransactWriteItems``: ``Budget.reserve``/``reserve_many``/``release``/``settle``/
  extend/reclaim (``state.ddb.transact``), ``Batches.transition`` with ``count_items``.
  A transaction is authorised item by item with the actions above.

Not called by the worker, so not granted: ``Scan`` (``Batches.list_all``,
``Breakers.list_open``: the CLI), ``BatchWriteItem``, ``ConditionCheckItem``,
``DescribeTable``, the stream actions. ``Budget.set_daily_limit`` (the ``budget#limits``
override an operator stores to raise the daily limit) is not the worker's: an explicit
Deny keeps the worker from writing that item whatever else it is allowed.

S3, the data bucket (``chatbatch.state.store.Store``):

- ``GetObject``: ``results/`` (``get_result``: a redelivered job's stored result, and
  after a lost ``put_result_once`` race),
  ``cache/`` (``get_cached``), ``claims/`` (``get_text`` of a claim check)
- ``PutObject``: ``results/`` (``put_result_once``), ``errors/`` (``put_error``),
  ``refused/`` (``put_refused``: messages refused for their sender),
  ``requests/`` (``put_request``: a failed job's message, in ``worker.results.fail``),
  ``costs/`` (``put_cost``), ``cache/`` (``put_cached``)
- ``ListBucket`` on the bucket: a missing key is then a 404 (``NoSuchKey``, which the
  store expects) instead of a 403. S3 evaluates it without an ``s3:prefix``, so it
  cannot be narrowed by one.

A claim check whose key is outside ``claims/`` is refused by S3 (403, not read).

The worker never reads ``requests/``, ``errors/``, ``history/``, ``batches/`` or
``parts/``, and never copies or deletes objects (``move_error_to_history`` and
``put_manifest`` are the CLI's).
SQS (send and change visibility on the four queues, plus what the event source mapping
needs), the secrets, the log group and X-Ray are granted in ``infra.worker``; EventBridge
``PutEvents`` (the Batch Completed event, ``chatbatch`` source only, one bus) in
``infra.events``; Lambda's ``UpdateEventSourceMapping`` (its own mappings) and
``ListEventSourceMappings`` (the budget pause) in ``infra.budget_pause``. ``GetItem`` and
``UpdateItem`` above also serve the completion check (``worker.completion``: the batch's
counters read, its completion claimed and marked) and write the pause item
(``pause#budget``).
"""

from __future__ import annotations

from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3

from chatbatch.core.resources import LIMITS_PK

TABLE_ACTIONS = (
    "dynamodb:GetItem",
    "dynamodb:BatchGetItem",
    "dynamodb:Query",
    "dynamodb:PutItem",
    "dynamodb:UpdateItem",
    "dynamodb:DeleteItem",
    "dynamodb:TransactWriteItems",
)
# Partition keys the worker may read but never write.
READ_ONLY_KEYS = (LIMITS_PK,)
ITEM_WRITES = ("dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem")

S3_READS = ("results/", "cache/", "claims/")
S3_WRITES = ("results/", "errors/", "refused/", "requests/", "costs/", "cache/")


def prefixes(reads: tuple[str, ...], writes: tuple[str, ...]) -> tuple[str, ...]:
    """Every prefix a role reads or writes, each once (its cdk-nag acknowledgements)."""
    return tuple(dict.fromkeys((*reads, *writes)))


S3_PREFIXES = prefixes(S3_READS, S3_WRITES)


def _name(action: str) -> str:
    """``dynamodb:GetItem`` -> ``GetItem`` (a statement id)."""
    return action.split(":", 1)[1]


def worker_data_statements(
    table: dynamodb.ITable,
    bucket: s3.IBucket,
    *,
    reads: tuple[str, ...] = S3_READS,
    writes: tuple[str, ...] = S3_WRITES,
) -> list[iam.PolicyStatement]:
    """One statement per action: the table's, the limit override's Deny, the bucket's
    (``reads``/``writes``: the object prefixes; the worker's by default, the batch route's
    gatherer passes its own, ``infra.batch_route``)."""
    statements = [
        iam.PolicyStatement(
            sid=f"Table{_name(action)}", actions=[action], resources=[table.table_arn]
        )
        for action in TABLE_ACTIONS
    ]
    statements.append(
        iam.PolicyStatement(
            sid="NoLimitOverrideWrites",
            effect=iam.Effect.DENY,
            actions=list(ITEM_WRITES),
            resources=[table.table_arn],
            conditions={"ForAnyValue:StringEquals": {"dynamodb:LeadingKeys": list(READ_ONLY_KEYS)}},
        )
    )
    statements.append(
        iam.PolicyStatement(
            sid="BucketGetObject",
            actions=["s3:GetObject"],
            resources=[bucket.arn_for_objects(f"{p}*") for p in reads],
        )
    )
    statements.append(
        iam.PolicyStatement(
            sid="BucketPutObject",
            actions=["s3:PutObject"],
            resources=[bucket.arn_for_objects(f"{p}*") for p in writes],
        )
    )
    statements.append(
        iam.PolicyStatement(
            sid="BucketListBucket", actions=["s3:ListBucket"], resources=[bucket.bucket_arn]
        )
    )
    return statements
