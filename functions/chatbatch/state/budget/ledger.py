"""Where the budget lives in the table, and the writes its ledgers take.

The keys of the day and batch ledgers, of a job's reservation (one per job, not per
day), of its open marker (per day) and of the raised limit; a charge (``ADD committed``
on the condition that it stays within the limit: no arithmetic in the condition) and a
plain addition. The package docstring tells the layout (**Items**) and why the condition
is one comparison.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from pydantic import BaseModel

from chatbatch.core.resources import LIMITS_PK, TABLE_PK, TABLE_SK, TABLE_TTL
from chatbatch.state.ddb import adds, n, s

LEDGER_TTL_S = 40 * 86_400

Item = dict[str, Any]


class DayUsage(BaseModel):
    day: str
    limit_usd: Decimal
    spent_usd: Decimal
    reserved_usd: Decimal


def _sharded(pk: str, shard: int) -> str:
    """Shard 0 is the unsharded item itself; shard k a partition key of its own."""
    return f"{pk}#{shard}" if shard else pk


def day_key(day: str, shard: int = 0) -> Item:
    return {TABLE_PK: s(_sharded(f"budget#day#{day}", shard)), TABLE_SK: s("ledger")}


def batch_ledger_key(batch_id: str, shard: int = 0) -> Item:
    return {TABLE_PK: s(_sharded(f"budget#batch#{batch_id}", shard)), TABLE_SK: s("ledger")}


def layout_key(day: str) -> Item:
    """How many shards the day's ledger and open markers have (fixed for the day)."""
    return {TABLE_PK: s(f"budget#day#{day}"), TABLE_SK: s("layout")}


def batch_layout_key(batch_id: str) -> Item:
    """How many shards a batch's ledger has (fixed by its first reservation)."""
    return {TABLE_PK: s(f"budget#batch#{batch_id}"), TABLE_SK: s("layout")}


RESERVATION_PREFIX = "budget#job#"


def reservation_key(job_key: str) -> Item:
    """A job's reservation: one per job, whatever the day (its ``day`` is an attribute), so
    a copy of the job that comes after midnight still finds the one that holds it."""
    return {TABLE_PK: s(f"{RESERVATION_PREFIX}{job_key}"), TABLE_SK: s("resv")}


def open_key(day: str, job_key: str, shard: int = 0) -> Item:
    return {TABLE_PK: s(_sharded(f"budget#open#{day}", shard)), TABLE_SK: s(job_key)}


def share(limit: int, shards: int, shard: int) -> int:
    """A shard's slice of a ledger's limit; the slices add up to the limit exactly."""
    base, rest = divmod(limit, shards)
    return base + (rest if shard == 0 else 0)


LIMITS_KEY = {TABLE_PK: s(LIMITS_PK), TABLE_SK: s("daily")}


def charge_item(table: str, key: Item, nanos: int, limit: int, now: float) -> Item:
    """ADD committed :n, on the condition that it stays within the limit."""
    return {
        "Update": {
            "TableName": table,
            "Key": key,
            "UpdateExpression": "ADD #c :n SET #x = :x",
            "ConditionExpression": "(attribute_not_exists(#c) AND :n <= :limit) OR #c <= :room",
            "ExpressionAttributeNames": {"#c": "committed", "#x": TABLE_TTL},
            "ExpressionAttributeValues": {
                ":n": n(nanos),
                ":limit": n(limit),
                ":room": n(limit - nanos),
                ":x": n(int(now) + LEDGER_TTL_S),
            },
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        }
    }


def add_item(table: str, key: Item, deltas: Mapping[str, int]) -> Item:
    """ADD each of ``deltas`` to the ledger at ``key`` (no condition)."""
    return {"Update": {"TableName": table, "Key": key, **adds(deltas)}}
