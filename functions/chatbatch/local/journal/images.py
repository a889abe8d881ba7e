"""A DynamoDB write as what it left: the after-image of every item it touched.

The journal records these rather than the request: a replay then puts (or deletes) each
item as it was, without evaluating a condition or an update expression again, which is
what makes moto slow (a settle transaction costs it ~50x a plain put), and without
depending on the request meeting the same state a second time.

``after_images`` runs inside moto's request handling, after the write and under its lock,
so the items it reads are the ones this write left.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodb.models.dynamo_type import DynamoType
from moto.dynamodb.models.table import Table

Attrs = dict[str, Any]  # attribute name -> AttributeValue, as on the wire
Change = tuple[str, Attrs, Attrs | None]  # table, key, the item (None: deleted)


def touched(operation: str, params: dict[str, Any]) -> Iterator[tuple[str, Attrs]]:
    """(table, the key or the whole item) of every item a write names."""
    if operation == "PutItem":
        yield params["TableName"], params["Item"]
    elif operation in ("UpdateItem", "DeleteItem"):
        yield params["TableName"], params["Key"]
    elif operation == "TransactWriteItems":
        for entry in params["TransactItems"]:
            for kind in ("Put", "Update", "Delete"):  # not ConditionCheck: it writes nothing
                if kind in entry:
                    write = entry[kind]
                    yield write["TableName"], write.get("Key") or write["Item"]
    elif operation == "BatchWriteItem":
        for table, requests in params["RequestItems"].items():
            for request in requests:
                put = request.get("PutRequest")
                yield table, put["Item"] if put else request["DeleteRequest"]["Key"]


def after_images(backend: DynamoDBBackend, operation: str, params: dict[str, Any]) -> list[Change]:
    """What the write ``operation`` with ``params`` left in each item it named."""
    changes: list[Change] = []
    for name, attrs in touched(operation, params):
        table = backend.get_table(name)
        key = key_of(table, attrs)
        range_attr = table.range_key_attr
        item = table.get_item(
            DynamoType(key[table.hash_key_attr]),
            DynamoType(key[range_attr]) if range_attr else None,
        )
        changes.append((name, key, item.to_json()["Attributes"] if item else None))
    return changes


def key_of(table: Table, attrs: Attrs) -> Attrs:
    """The key attributes of an item (or of a key)."""
    names = [table.hash_key_attr, table.range_key_attr]
    return {name: attrs[name] for name in names if name}


def apply(backend: DynamoDBBackend, changes: Iterable[Change]) -> None:
    """Leave each item as ``changes`` say (a replay)."""
    for table, key, item in changes:
        if item is None:
            backend.delete_item(table, key)
        else:
            backend.put_item(table, item)
