"""DynamoDB attribute values, written and read the same way by every module."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

CONFLICT_RETRIES = 6


def s(value: str) -> dict[str, Any]:
    """A string attribute value."""
    return {"S": value}


def n(value: int | float) -> dict[str, Any]:
    """A number attribute value."""
    return {"N": str(value)}


def int_of(item: Mapping[str, Any] | None, name: str) -> int:
    """A number attribute of an item as an int (0 when absent)."""
    return int((item or {}).get(name, {}).get("N", 0))


def transact(
    client: DynamoDBClient,
    items: Sequence[Mapping[str, Any]],
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> list[dict[str, Any]]:
    """Commit a transaction; the cancellation reasons if a condition failed ([] if committed).

    A transaction cancelled for another reason (a conflict with a concurrent one on the
    same hot item, throttling) is tried again after a jittered backoff: botocore does not
    retry those, and the items every job touches (the batch, the day's ledger) are hot.
    """
    for attempt in range(CONFLICT_RETRIES):
        try:
            client.transact_write_items(TransactItems=items)  # type: ignore[arg-type]
            return []
        except client.exceptions.TransactionCanceledException as err:
            reasons = [dict(r) for r in err.response.get("CancellationReasons", [])]
            if any(r.get("Code") == "ConditionalCheckFailed" for r in reasons):
                return reasons
            if attempt == CONFLICT_RETRIES - 1:
                raise
            sleep(random.uniform(0.005, 0.02) * 2**attempt)
    raise AssertionError("unreachable")
