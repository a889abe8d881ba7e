"""The local state's journal: what it records (only writes that took effect, in order),
how a torn last line is survived, and what a replay into a fresh moto rebuilds."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from chatbatch.core.config import Config, Priority
from chatbatch.core.resources import Resources
from chatbatch.local.aws import create_resources, moto_in_process
from chatbatch.local.journal.appender import SyncedAppender
from chatbatch.local.journal.journal import records
from chatbatch.local.journal.replay import ReplayReport
from chatbatch.local.journal.state_dir import JOURNAL, StateError, durable
from chatbatch.worker.intake import ATTR_OWNER


def key(pk: str) -> dict[str, Any]:
    return {"pk": {"S": pk}, "sk": {"S": "x"}}


def owner(value: str) -> dict[str, Any]:
    return {ATTR_OWNER: {"DataType": "String", "StringValue": value}}


def test_a_torn_last_line_is_cut_and_appends_go_on(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    path.write_bytes(b'{"a":1}\n{"b":2}\n{"c":')  # killed in the middle of a line
    with SyncedAppender(path) as journal:
        journal.append(b'{"d":4}\n')
    assert [record for _, _, record in records(path)] == [{"a": 1}, {"b": 2}, {"d": 4}]


@pytest.fixture
def state(tmp_path: Path, config: Config) -> Iterator[tuple[Path, Resources]]:
    """A fresh moto with the stack's resources, journaled into ``tmp_path``."""
    with moto_in_process():
        resources = create_resources(config)
        with durable(tmp_path, resources) as report:
            assert not report.resumed
            yield tmp_path, resources


def test_only_writes_that_took_effect_are_journaled(state: tuple[Path, Resources]) -> None:
    path, res = state
    ddb, s3, sqs = boto3.client("dynamodb"), boto3.client("s3"), boto3.client("sqs")
    ddb.put_item(TableName=res.table, Item={**key("a"), "n": {"N": "1"}})
    with pytest.raises(ddb.exceptions.ConditionalCheckFailedException):
        ddb.put_item(
            TableName=res.table,
            Item={**key("a"), "n": {"N": "2"}},
            ConditionExpression="attribute_not_exists(pk)",
        )
    s3.put_object(Bucket=res.bucket, Key="results/b/a.json", Body=b"first", IfNoneMatch="*")
    with pytest.raises(s3.exceptions.ClientError):
        s3.put_object(Bucket=res.bucket, Key="results/b/a.json", Body=b"second", IfNoneMatch="*")
    queue = res.queues[Priority.normal]
    sent = [sqs.send_message(QueueUrl=queue, MessageBody=f"m{i}")["MessageId"] for i in range(2)]
    got = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=1)["Messages"][0]
    sqs.delete_message(QueueUrl=queue, ReceiptHandle=got["ReceiptHandle"])
    sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["All"])  # reads: nothing

    lines = [record for _, _, record in records(path / JOURNAL) if record]
    assert ["ddb" if "ddb" in line else line.get("s3") or line["sqs"] for line in lines] == [
        "ddb",
        "put",
        "add",
        "add",
        "del",
    ]
    # a DynamoDB write as the item it left
    assert lines[0]["ddb"] == [[res.table, key("a"), {**key("a"), "n": {"N": "1"}}]]
    assert lines[1]["t"] == "first"
    assert [line["id"] for line in lines[2:4]] == sent
    assert lines[4]["ids"] == [got["MessageId"]]


def messages(url: str) -> list[Any]:
    return (
        boto3.client("sqs")
        .receive_message(QueueUrl=url, MaxNumberOfMessages=10, MessageAttributeNames=["All"])
        .get("Messages", [])
    )


def write_a_history(res: Resources, max_receives: int) -> dict[str, str]:
    """Writes of every kind; returns the ids of the messages it leaves queued, by body."""
    ddb, s3, sqs = boto3.client("dynamodb"), boto3.client("s3"), boto3.client("sqs")
    for _ in range(3):  # conditional updates: each meets the state the one before left
        ddb.update_item(
            TableName=res.table,
            Key=key("counter"),
            UpdateExpression="ADD n :one",
            ConditionExpression="attribute_not_exists(n) OR n < :three",
            ExpressionAttributeValues={":one": {"N": "1"}, ":three": {"N": "3"}},
        )
    # a reservation whose call was in flight (armed), as the budget leaves it
    armed = {**key("resv"), "armed": {"BOOL": True}, "armed_at": {"N": "1796000000.5"}}
    ddb.put_item(TableName=res.table, Item=armed)
    ddb.transact_write_items(
        TransactItems=[
            {"Put": {"TableName": res.table, "Item": {**key("t"), "v": {"S": "x"}}}},
            {"Delete": {"TableName": res.table, "Key": key("counter-gone")}},
        ]
    )
    s3.put_object(Bucket=res.bucket, Key="kept.json", Body=b'{"k": 1}')
    s3.put_object(Bucket=res.bucket, Key="gone.json", Body=b"x")
    s3.delete_object(Bucket=res.bucket, Key="gone.json")
    s3.put_object(Bucket=res.bucket, Key="binary", Body=bytes(range(256)))
    url = res.queues[Priority.normal]
    ids = {}
    for body, attrs in (("plain", {}), ("handed-back", owner("first-copy")), ("done", {})):
        ids[body] = sqs.send_message(QueueUrl=url, MessageBody=body, MessageAttributes=attrs)[
            "MessageId"
        ]
    ids["later"] = sqs.send_message(QueueUrl=url, MessageBody="later", DelaySeconds=600)[
        "MessageId"
    ]
    done = next(m for m in messages(url) if m["Body"] == "done")
    sqs.delete_message(QueueUrl=url, ReceiptHandle=done["ReceiptHandle"])
    del ids["done"]
    # a message received maxReceiveCount times moves to its DLQ at the next receive
    high = res.queues[Priority.high]
    sqs.send_message(QueueUrl=high, MessageBody="dead")
    for _ in range(max_receives + 1):
        sqs.receive_message(QueueUrl=high, VisibilityTimeout=0)
    return ids


def replayed(path: Path, config: Config) -> tuple[ReplayReport, dict[str, Any]]:
    """A fresh moto, the journal replayed into it; its report and what it holds."""
    with moto_in_process():
        res = create_resources(config)
        ddb, s3 = boto3.client("dynamodb"), boto3.client("s3")
        assert ddb.scan(TableName=res.table)["Items"] == []
        with durable(path, res) as report:
            items = sorted(ddb.scan(TableName=res.table)["Items"], key=lambda i: i["pk"]["S"])
            listed = s3.list_objects_v2(Bucket=res.bucket).get("Contents", [])
            objects = {
                o["Key"]: s3.get_object(Bucket=res.bucket, Key=o["Key"])["Body"].read()
                for o in listed
            }
            queued = {
                m["Body"]: m.get("MessageAttributes", {}) for m in messages(res.queues["normal"])
            }
            dead = [m["Body"] for m in messages(res.dlqs["high"]) + messages(res.queues["high"])]
        return report, {"items": items, "objects": objects, "queued": queued, "dead": dead}


def test_a_replay_rebuilds_the_state_and_sends_each_queued_message_once(
    tmp_path: Path, config: Config
) -> None:
    killed, ended = tmp_path / "killed", tmp_path / "ended"
    with moto_in_process():
        res = create_resources(config)
        with durable(ended, res):
            ids = write_a_history(res, config.worker.max_receive_count)
            shutil.copytree(ended, killed)  # what a kill -9 leaves: the journal as written

    report, held = replayed(killed, config)
    assert report.refused == report.unreadable == 0 and report.writes == 9
    assert [i["pk"]["S"] for i in held["items"]] == ["counter", "resv", "t"]
    assert held["items"][0]["n"] == {"N": "3"}
    # the process that armed it is dead: its call is over, to be booked at once
    assert held["items"][1] == {**key("resv"), "armed": {"BOOL": True}, "armed_at": {"N": "0"}}
    assert held["objects"] == {"kept.json": b'{"k": 1}', "binary": bytes(range(256))}
    # the messages still queued came back, each owned by the copy it stands for (a
    # handed-back one keeps its owner); a delayed one waits out what is left of its delay
    assert report.resent == {"chatbatch-normal": 3, "chatbatch-high-dlq": 1}
    assert held["dead"] == ["dead"], "a dead letter comes back to its DLQ, not its queue"
    assert {body: a[ATTR_OWNER]["StringValue"] for body, a in held["queued"].items()} == {
        "plain": ids["plain"],
        "handed-back": "first-copy",
    }
    # the replay compacted the journal: the state, not its history; the same again
    again, held_again = replayed(killed, config)
    assert again.writes == 5 and again.resent == report.resent, "each message once"
    assert held_again == held
    # a process that ended compacts too
    ended_report, held_ended = replayed(ended, config)
    assert ended_report.writes == 5 and held_ended == held


def test_a_state_of_another_stack_or_in_use_is_refused(tmp_path: Path, config: Config) -> None:
    with moto_in_process():
        res = create_resources(config)
        with durable(tmp_path, res):
            second = durable(tmp_path, res)
            with pytest.raises(StateError, match="in use"), second:
                pass
        other = res.model_copy(update={"table": "another-state"})
        with pytest.raises(StateError, match="another stack"), durable(tmp_path, other):
            pass
    assert json.loads((tmp_path / "stack.json").read_text())["table"] == res.table
