"""The local runtime's moto fixes: transactions roll back item by item, never copy tables."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import boto3
import pytest
from moto.dynamodb.models.table import Table

from chatbatch.config import Config
from chatbatch.local.aws import create_resources, moto_in_process


@pytest.fixture
def table(config: Config) -> Iterator[str]:
    with moto_in_process():
        yield create_resources(config).table


def key(pk: str) -> dict:
    return {"pk": {"S": pk}, "sk": {"S": "x"}}


def test_failed_transaction_restores_only_its_items(table: str, monkeypatch):
    monkeypatch.setattr(
        Table, "__deepcopy__", lambda *a: pytest.fail("table deep-copied"), raising=False
    )
    ddb = boto3.client("dynamodb")
    ddb.put_item(TableName=table, Item={**key("a"), "n": {"N": "1"}})
    ddb.put_item(TableName=table, Item={**key("other"), "n": {"N": "7"}})
    with pytest.raises(ddb.exceptions.TransactionCanceledException):
        ddb.transact_write_items(
            TransactItems=[
                {
                    "Update": {
                        "TableName": table,
                        "Key": key("a"),
                        "UpdateExpression": "ADD n :one",
                        "ExpressionAttributeValues": {":one": {"N": "1"}},
                    }
                },
                {"Put": {"TableName": table, "Item": {**key("new"), "n": {"N": "1"}}}},
                {
                    "ConditionCheck": {
                        "TableName": table,
                        "Key": key("missing"),
                        "ConditionExpression": "attribute_exists(pk)",
                    }
                },
            ]
        )
    assert ddb.get_item(TableName=table, Key=key("a"))["Item"]["n"] == {"N": "1"}
    assert "Item" not in ddb.get_item(TableName=table, Key=key("new"))
    assert ddb.get_item(TableName=table, Key=key("other"))["Item"]["n"] == {"N": "7"}


def test_conditional_writes_from_many_threads_pass_once(table: str):
    ddb = boto3.client("dynamodb")

    def claim(i: int) -> bool:
        try:
            ddb.put_item(
                TableName=table,
                Item={**key("lock"), "owner": {"N": str(i)}},
                ConditionExpression="attribute_not_exists(pk)",
            )
        except ddb.exceptions.ConditionalCheckFailedException:
            return False
        return True

    with ThreadPoolExecutor(16) as pool:
        assert sum(pool.map(claim, range(200))) == 1
