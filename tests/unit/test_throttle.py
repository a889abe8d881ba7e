"""The local runtime's DynamoDB write limit (``chatbatch.local.throttle``): its accounting
(a rolling second, DynamoDB's write units, doubled in a transaction) and its refusals as
botocore parses them (the error code, ``ThrottlingReasons``, ``CancellationReasons``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError

from chatbatch.local.aws import create_table, moto_in_process
from chatbatch.local.throttle import HOT_KEY_MESSAGE, THROTTLING_REASON, active, throttling
from chatbatch.state.ddb import error_code

TABLE = "throttled"
ONCE = BotoConfig(retries={"mode": "standard", "total_max_attempts": 1})  # refusals seen raw


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def ddb() -> Iterator[Any]:
    with moto_in_process():
        client = boto3.client("dynamodb", config=ONCE)
        create_table(client, TABLE)
        yield client


def key(pk: str) -> dict[str, Any]:
    return {"pk": {"S": pk}, "sk": {"S": "x"}}


def add(ddb: Any, pk: str) -> None:
    ddb.update_item(
        TableName=TABLE,
        Key=key(pk),
        UpdateExpression="ADD n :one",
        ExpressionAttributeValues={":one": {"N": "1"}},
    )


def refused(call: Any) -> ClientError:
    with pytest.raises(ClientError) as caught:
        call()
    return caught.value


def test_an_item_takes_its_units_a_second_and_no_more(ddb: Any) -> None:
    clock = Clock()
    with throttling(3, clock) as throttle:
        for _ in range(3):  # 1 WCU each
            add(ddb, "hot")
        err = refused(lambda: add(ddb, "hot"))
        add(ddb, "cold")  # another item has its own limit
        clock.now += 0.99  # still within the second of the first write
        refused(lambda: add(ddb, "hot"))
        clock.now += 0.02  # the first writes have left the window
        add(ddb, "hot")
    assert error_code(err) == "ProvisionedThroughputExceededException"
    assert err.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert err.response["Error"]["Message"] == HOT_KEY_MESSAGE
    assert err.response["ThrottlingReasons"][0]["reason"] == THROTTLING_REASON
    assert err.response["ThrottlingReasons"][0]["resource"].endswith(f"table/{TABLE}")
    assert throttle.throttled == 2
    assert throttle.refused_items == {(TABLE, "hot", "x"): 2}
    got = ddb.get_item(TableName=TABLE, Key=key("hot"), ConsistentRead=True)["Item"]
    assert got["n"] == {"N": "4"}, "a refused write changed nothing"


def test_units_follow_the_larger_item_by_started_kb(ddb: Any) -> None:
    clock = Clock()
    big = {**key("big"), "blob": {"S": "a" * 1500}}  # 2 KB started: 2 WCU
    with throttling(4, clock) as throttle:
        ddb.put_item(TableName=TABLE, Item=big)
        add(ddb, "big")  # the item is still 2 KB: 2 more, 4 in all
        assert throttle.used((TABLE, "big", "x")) == 4
        refused(lambda: ddb.delete_item(TableName=TABLE, Key=key("big")))


def test_a_transaction_costs_double_and_is_refused_whole(ddb: Any) -> None:
    clock = Clock()

    def txn() -> None:
        update = {
            "TableName": TABLE,
            "Key": key("ledger"),
            "UpdateExpression": "ADD n :one",
            "ExpressionAttributeValues": {":one": {"N": "1"}},
        }
        marker = {"TableName": TABLE, "Item": {**key(f"marker{clock.now}")}}
        ddb.transact_write_items(TransactItems=[{"Put": marker}, {"Update": update}])

    with throttling(4, clock) as throttle:
        txn()
        txn()  # 2 + 2 WCU on the ledger
        assert throttle.used((TABLE, "ledger", "x")) == 4
        clock.now += 0.5
        err = refused(txn)
    assert error_code(err) == "TransactionCanceledException"
    reasons = err.response["CancellationReasons"]
    assert [r["Code"] for r in reasons] == ["None", "ThrottlingError"]
    assert reasons[1]["Message"] == HOT_KEY_MESSAGE
    assert "marker100.5" not in {item["pk"]["S"] for item in ddb.scan(TableName=TABLE)["Items"]}, (
        "nothing of a refused transaction is written"
    )
    assert throttle.refused_items == {(TABLE, "ledger", "x"): 1}


def test_a_write_refused_by_its_condition_spends_its_units(ddb: Any) -> None:
    clock = Clock()
    with throttling(2, clock) as throttle:
        add(ddb, "c")
        err = refused(
            lambda: ddb.put_item(
                TableName=TABLE, Item=key("c"), ConditionExpression="attribute_not_exists(pk)"
            )
        )
        assert error_code(err) == "ConditionalCheckFailedException"
        assert throttle.used((TABLE, "c", "x")) == 2
        assert throttle.throttled == 0


def test_botocore_retries_a_throttled_write_until_it_passes(ddb: Any) -> None:
    """Real time here: the refused write is retried (standard mode: a jittered backoff
    from 1 s) until the window has moved on."""
    retrying = boto3.client(
        "dynamodb", config=BotoConfig(retries={"mode": "standard", "total_max_attempts": 10})
    )
    with throttling(1) as throttle:
        add(ddb, "r")
        add(retrying, "r")
    assert throttle.throttled >= 1
    got = ddb.get_item(TableName=TABLE, Key=key("r"), ConsistentRead=True)["Item"]
    assert got["n"] == {"N": "2"}


def test_throttling_ends_with_its_block(ddb: Any) -> None:
    with throttling(1):
        assert active() is not None
    assert active() is None
    for _ in range(5):
        add(ddb, "free")
    with pytest.raises(ValueError), throttling(0):
        pass
