"""The local runtime's moto fixes: transactions roll back item by item, never copy tables."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto.dynamodb.models.table import Table

from chatbatch.core.config import Config
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


def test_queue_attributes_hold_motos_values_computed_only_when_read(
    config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    from moto.sqs.models import Queue, sqs_backends

    from chatbatch.local.moto_fixes import MOTO_QUEUE_ATTRIBUTES

    with moto_in_process():
        resources = create_resources(config)
        sqs = boto3.client("sqs")
        fifo = sqs.create_queue(
            QueueName="f.fifo",
            Attributes={"FifoQueue": "true", "ContentBasedDeduplication": "true"},
        )["QueueUrl"]
        url = resources.queues[next(iter(resources.queues))]  # has a redrive policy
        backend = sqs_backends[boto3.client("sts").get_caller_identity()["Account"]]["us-east-1"]
        queues = list(backend.queues.values())
        assert any(q.redrive_policy for q in queues) and any(q.fifo_queue for q in queues)
        for queue in queues:
            lazy, full = queue.attributes, MOTO_QUEUE_ATTRIBUTES(queue)
            assert dict(lazy) == full
            assert {name: lazy[name] for name in full} == full
            assert lazy.get("ContentBasedDeduplication") == full.get("ContentBasedDeduplication")

        # sending and receiving no longer count the messages (moto did, per message)
        def no_count(_queue: Queue) -> int:
            raise AssertionError("message count computed")

        monkeypatch.setattr(Queue, "approximate_number_of_messages", property(no_count))
        for queue_url in (url, fifo):
            entries = [
                {"Id": str(i), "MessageBody": f"m{i}", "MessageGroupId": "g"} for i in range(10)
            ]
            if queue_url == url:
                entries = [{"Id": e["Id"], "MessageBody": e["MessageBody"]} for e in entries]
            sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)
            got = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10)["Messages"]
            assert got
        with pytest.raises(AssertionError, match="count computed"):
            sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])


def test_an_update_expression_is_parsed_once(table: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from moto.dynamodb.parsing import expressions

    parsed: list[str] = []
    tokenize = expressions.ExpressionTokenizer.make_list
    monkeypatch.setattr(
        expressions.ExpressionTokenizer,
        "make_list",
        staticmethod(lambda text: parsed.append(text) or tokenize(text)),
    )
    ddb = boto3.client("dynamodb")
    expression = "ADD n :one SET seen_by_parse_test = :t"
    for i in range(5):
        ddb.update_item(
            TableName=table,
            Key=key(f"parse{i % 2}"),
            UpdateExpression=expression,
            ExpressionAttributeValues={":one": {"N": "1"}, ":t": {"S": str(i)}},
        )
    assert parsed.count(expression) <= 1
    # the kept parse is never changed by an update: the values are this call's
    item = ddb.get_item(TableName=table, Key=key("parse0"))["Item"]
    assert item["n"] == {"N": "3"} and item["seen_by_parse_test"] == {"S": "4"}


def test_s3_writes_if_none_match_from_many_threads_pass_once(
    config: Config, monkeypatch: pytest.MonkeyPatch
):
    """A result written with ``If-None-Match`` (as before flush objects) relies on it: two
    deliveries of one job that both "win" each count their own result's cost, and the
    last written overwrites the one counted (the batch counters then differ from the cost
    records)."""
    from moto.s3.models import S3Backend

    put_object = S3Backend.put_object

    def slow_put_object(self: S3Backend, *args: Any, **kwargs: Any) -> Any:
        time.sleep(0.05)  # between moto's "does it exist?" and the write
        return put_object(self, *args, **kwargs)

    monkeypatch.setattr(S3Backend, "put_object", slow_put_object)
    with moto_in_process():
        bucket = create_resources(config).bucket
        s3 = boto3.client("s3")

        def put(i: int) -> bool:
            try:
                s3.put_object(Bucket=bucket, Key="results/b/j.json", Body=str(i), IfNoneMatch="*")
            except ClientError as err:
                assert err.response["Error"]["Code"] == "PreconditionFailed"
                return False
            return True

        with ThreadPoolExecutor(8) as pool:
            assert sum(pool.map(put, range(8))) == 1


def test_a_message_carries_its_senders_principal_id(table: str) -> None:
    """Fix 5: SQS's SenderId is the sender's, as STS names it (moto stamps one fixed id)."""
    sqs = boto3.client("sqs")
    url = sqs.create_queue(QueueName="senders")["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="mine")
    role = "arn:aws:iam::123456789012:role/Other"
    keys = boto3.client("sts").assume_role(RoleArn=role, RoleSessionName="s1")["Credentials"]
    other = boto3.client(
        "sqs",
        aws_access_key_id=keys["AccessKeyId"],
        aws_secret_access_key=keys["SecretAccessKey"],
        aws_session_token=keys["SessionToken"],
    )
    other.send_message_batch(QueueUrl=url, Entries=[{"Id": "1", "MessageBody": "theirs"}])
    got = sqs.receive_message(
        QueueUrl=url, MaxNumberOfMessages=10, MessageSystemAttributeNames=["SenderId"]
    )["Messages"]
    senders = {m["Body"]: m["Attributes"]["SenderId"] for m in got}
    assert senders["mine"] == boto3.client("sts").get_caller_identity()["UserId"]
    assert senders["theirs"].startswith("AROA") and senders["theirs"].endswith(":s1")


def _dynamodb_session(ddb: Any, table: str) -> list[dict[str, Any]]:
    """What botocore parses from a run of DynamoDB calls (request metadata left out)."""
    item = {**key("k"), "n": {"N": "1"}, "s": {"S": "é"}, "b": {"B": b"\x00\xff"}}
    nested = {**key("m"), "m": {"M": {"l": {"L": [{"N": "2"}, {"BOOL": True}, {"NULL": True}]}}}}
    calls: list[Callable[[], dict[str, Any]]] = [
        lambda: ddb.put_item(TableName=table, Item=item, ReturnValues="ALL_OLD"),
        lambda: ddb.put_item(TableName=table, Item=nested),
        lambda: ddb.get_item(TableName=table, Key=key("k"), ConsistentRead=True),
        lambda: ddb.get_item(TableName=table, Key=key("m")),
        lambda: ddb.get_item(TableName=table, Key=key("absent")),
        *(
            lambda rv=rv: ddb.update_item(
                TableName=table,
                Key=key("m"),
                UpdateExpression="ADD c :one SET t = :t",
                ExpressionAttributeValues={":one": {"N": "1"}, ":t": {"SS": ["a", "b"]}},
                ReturnValues=rv,
            )
            for rv in ("NONE", "ALL_NEW", "UPDATED_NEW", "ALL_OLD", "UPDATED_OLD")
        ),
        lambda: ddb.query(
            TableName=table,
            KeyConditionExpression="pk = :pk",
            ExpressionAttributeValues={":pk": {"S": "m"}},
        ),
        lambda: ddb.batch_get_item(RequestItems={table: {"Keys": [key("k"), key("m")]}}),
        lambda: ddb.delete_item(TableName=table, Key=key("k"), ReturnValues="ALL_OLD"),
    ]
    answers = []
    for call in calls:
        answer = call()
        answer.pop("ResponseMetadata")
        answers.append(answer)
    return answers


def test_dynamodb_answers_parse_the_same_as_motos_own(
    table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from chatbatch.local import moto_fixes

    ddb = boto3.client("dynamodb")
    by_shape = moto_fixes.DynamoResult.execute_result
    plain = 0

    def counted(self: Any, context: Any) -> Any:
        nonlocal plain
        answer = by_shape(self, context)
        plain += answer[2] == json.dumps(self.result, default=repr)
        return answer

    monkeypatch.setattr(moto_fixes.DynamoResult, "execute_result", counted)
    fast = _dynamodb_session(ddb, table)
    assert plain >= 8  # most answers took the plain way (not the binary ones)
    monkeypatch.setattr(moto_fixes, "PLAIN_ANSWERS", False)
    ddb.delete_item(TableName=table, Key=key("m"))
    assert _dynamodb_session(ddb, table) == fast
