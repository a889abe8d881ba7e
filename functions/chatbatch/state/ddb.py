"""DynamoDB attribute values and update expressions, written and read the same way by every module.

``s`` and ``n`` make attribute values, ``num`` and ``int_of`` read numbers back, ``plain``
turns an item into Python values, ``scan_items`` reads items by key prefix, ``Update``
builds an update expression with its placeholders and conditions, ``transact`` commits a
transaction (retrying conflicts).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from chatbatch.core.resources import TABLE_PK, TABLE_SK

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_dynamodb.type_defs import AttributeValueTypeDef

MAX_TRANSACT_ITEMS = 100  # DynamoDB's limit per TransactWriteItems
CONFLICT_RETRIES = 6
# A cancellation for a conflict clears in milliseconds; one for throttling (a hot item past
# its write units a second) clears when DynamoDB's one-second window moves on: its backoff
# doubles from THROTTLE_BACKOFF_S, so the tries span more than that second (~1.5 s).
THROTTLE_BACKOFF_S = 0.05


def s(value: str) -> AttributeValueTypeDef:
    """A string attribute value."""
    return {"S": value}


def n(value: int | float) -> AttributeValueTypeDef:
    """A number attribute value."""
    return {"N": str(value)}


def num(value: Mapping[str, Any] | None) -> float | None:
    """A number attribute value as a number (None when absent or not a number).

    Whole numbers come back as ints, exact however large (nano-dollars pass 2**53).
    """
    if not value or "N" not in value:
        return None
    text = str(value["N"])
    try:
        return int(text)
    except ValueError:
        return float(text)


def int_of(item: Mapping[str, Any] | None, name: str) -> int:
    """A number attribute of an item as an int (0 when absent)."""
    return int(num((item or {}).get(name)) or 0)


def plain(item: Mapping[str, Any]) -> dict[str, Any]:
    """An item's numbers, booleans and strings as Python values (other types left out)."""
    out: dict[str, Any] = {}
    for name, value in item.items():
        if "N" in value:
            out[name] = num(value)
        elif "BOOL" in value:
            out[name] = value["BOOL"]
        elif "S" in value:
            out[name] = value["S"]
    return out


class Update:
    """Builds an update: placeholders for names and values, ADD/SET/REMOVE clauses, conditions."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}
        self.values: dict[str, AttributeValueTypeDef] = {}
        self.adds: list[str] = []
        self.sets: list[str] = []
        self.removes: list[str] = []
        self.conditions: list[str] = []

    def name(self, attr: str) -> str:
        key = f"#a{len(self.names)}"
        self.names[key] = attr
        return key

    def value(self, value: float) -> str:
        key = f":v{len(self.values)}"
        self.values[key] = n(value)
        return key

    def add(self, attr: str, delta: int) -> None:
        self.adds.append(f"{self.name(attr)} {self.value(delta)}")

    def set(self, attr: str, value: float) -> None:
        self.sets.append(f"{self.name(attr)} = {self.value(value)}")

    def at_most(self, attr: str, bound: int) -> None:
        """Absent, or at most ``bound``."""
        self._absent_or(attr, "<=", bound)

    def older_than(self, attr: str, value: float) -> None:
        """Absent, or below ``value``."""
        self._absent_or(attr, "<", value)

    def absent_or_equal(self, attr: str, value: float | None) -> None:
        """Absent if ``value`` is None, else equal to it."""
        self._pinned(attr, "=", value)

    def not_grown(self, attr: str, value: int | None) -> None:
        """Pin an attribute that should not have grown since it was read."""
        self._pinned(attr, "<=", value)

    def _absent_or(self, attr: str, op: str, value: float) -> None:
        name = self.name(attr)
        self.conditions.append(f"(attribute_not_exists({name}) OR {name} {op} {self.value(value)})")

    def _pinned(self, attr: str, op: str, value: float | None) -> None:
        name = self.name(attr)
        if value is None:
            self.conditions.append(f"attribute_not_exists({name})")
        else:
            self.conditions.append(f"{name} {op} {self.value(value)}")

    def expression(self) -> str:
        parts = []
        if self.adds:
            parts.append("ADD " + ", ".join(self.adds))
        if self.sets:
            parts.append("SET " + ", ".join(self.sets))
        if self.removes:
            parts.append("REMOVE " + ", ".join(self.removes))
        return " ".join(parts)

    def params(self) -> dict[str, Any]:
        """The update, its placeholders and its conditions (ANDed), as request fields."""
        out: dict[str, Any] = {
            "UpdateExpression": self.expression(),
            "ExpressionAttributeNames": self.names,
            "ExpressionAttributeValues": self.values,
        }
        if self.conditions:
            out["ConditionExpression"] = " AND ".join(self.conditions)
        return out


def adds(deltas: Mapping[str, int]) -> dict[str, Any]:
    """``ADD`` of each delta to its attribute (a ledger's or a batch's counters)."""
    update = Update()
    for attr, delta in deltas.items():
        update.add(attr, delta)
    return update.params()


def scan_items(
    client: DynamoDBClient,
    table: str,
    prefix: str,
    sort: str | tuple[str, ...],
    *,
    consistent: bool = False,
    attributes: Sequence[str] = (),
) -> Iterator[dict[str, Any]]:
    """Every item whose partition key starts with ``prefix`` and sort key is ``sort`` (or
    one of several), plain, page by page. ``attributes``: only these (and the partition
    key) come back."""
    names = {"#pk": TABLE_PK, "#sk": TABLE_SK}
    sorts = {
        f":sk{i}": s(value) for i, value in enumerate((sort,) if isinstance(sort, str) else sort)
    }
    kwargs: dict[str, Any] = {
        "TableName": table,
        "FilterExpression": f"begins_with(#pk, :p) AND #sk IN ({', '.join(sorts)})",
        "ExpressionAttributeNames": names,
        "ExpressionAttributeValues": {":p": s(prefix), **sorts},
        "ConsistentRead": consistent,
    }
    if attributes:
        projected = {f"#a{i}": name for i, name in enumerate(attributes)}
        names.update(projected)
        kwargs["ProjectionExpression"] = ", ".join(["#pk", *projected])
    while True:
        reply = client.scan(**kwargs)
        yield from (plain(item) for item in reply.get("Items", []))
        if "LastEvaluatedKey" not in reply:
            return
        kwargs["ExclusiveStartKey"] = reply["LastEvaluatedKey"]


def error_code(err: ClientError) -> str:
    """An AWS error's code. Tell errors by it, not by ``client.exceptions``: botocore makes
    a client's exception classes on first use without a lock, so threads that use a fresh
    client at once can get different classes, and one thread's ``except`` misses what
    another's call raised."""
    return str(err.response.get("Error", {}).get("Code", ""))


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
    A throttled one (a reason ``ThrottlingError``) backs off longer (``backoff_s``).

    The cancellation is told by its error code (``error_code``).
    """
    for attempt in range(CONFLICT_RETRIES):
        try:
            client.transact_write_items(TransactItems=items)  # type: ignore[arg-type]
            return []
        except ClientError as err:
            if error_code(err) != "TransactionCanceledException":
                raise
            reasons = [dict(r) for r in err.response.get("CancellationReasons", [])]
            if any(r.get("Code") == "ConditionalCheckFailed" for r in reasons):
                return reasons
            if attempt == CONFLICT_RETRIES - 1:
                raise
            sleep(
                backoff_s(
                    attempt, throttled=any(r.get("Code") == "ThrottlingError" for r in reasons)
                )
            )
    raise AssertionError("unreachable")


def backoff_s(attempt: int, *, throttled: bool) -> float:
    """The jittered wait before a cancelled transaction's ``attempt + 1``-th retry."""
    if throttled:
        return float(random.uniform(0.5, 1.0) * THROTTLE_BACKOFF_S * 2**attempt)
    return float(random.uniform(0.005, 0.02) * 2**attempt)
