"""SQS record -> job: default batches by the day a message was first sent, and what a
hand-back carries."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Any

import boto3
import pytest
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from botocore.exceptions import ClientError

from chatbatch.core.config import Config, Priority
from chatbatch.core.jobs import ATTR_BATCH, CLAIM_CHECK_KEY
from chatbatch.core.resources import Resources
from chatbatch.state.store import Store
from chatbatch.worker.intake import Intake, read_record

RESOURCES = Resources(
    table="t", bucket="b", queues={p: f"https://sqs/123/cb-{p.value}" for p in Priority}
)


def record(body: Any, *, sent: dt.datetime, attributes: dict[str, str] | None = None) -> SQSRecord:
    return SQSRecord(
        {
            "messageId": "m-1",
            "receiptHandle": "r",
            "body": body if isinstance(body, str) else json.dumps(body),
            "attributes": {
                "ApproximateReceiveCount": "2",
                "SentTimestamp": str(int(sent.timestamp() * 1000)),
            },
            "messageAttributes": {
                k: {"stringValue": v, "dataType": "String"} for k, v in (attributes or {}).items()
            },
            "eventSourceARN": "arn:aws:sqs:us-east-1:123:cb-high",
        }
    )


class NoStore:
    def get_text(self, key: str) -> str | None:
        raise AssertionError("no claim check here")


def test_default_batch_is_the_day_the_message_was_sent(config: Config):
    yesterday = dt.datetime(2026, 11, 27, 23, 59, tzinfo=dt.UTC)
    intake = read_record(
        record({"custom_id": "a", "prompt": "x"}, sent=yesterday), config, RESOURCES, NoStore()
    )
    assert (intake.batch_id, intake.priority, intake.receive_count) == (
        "daily-2026-11-27",
        Priority.high,
        2,
    )


def test_a_hand_back_keeps_its_batch_and_a_bad_body_keeps_its_ids(config: Config):
    now = dt.datetime(2026, 11, 28, tzinfo=dt.UTC)
    kept = read_record(
        record({"custom_id": "a", "prompt": "x"}, sent=now, attributes={ATTR_BATCH: "daily-x"}),
        config,
        RESOURCES,
        NoStore(),
    )
    assert kept.batch_id == "daily-x"
    bad = read_record(record("{not json", sent=now), config, RESOURCES, NoStore())
    assert bad.job is None and bad.error is not None
    assert (bad.custom_id, bad.batch_id) == ("msg-m-1", "daily-2026-11-28")
    assert "not valid JSON" in str(bad.error)


class Claims:
    """A data bucket holding claim-checked job lines (or unreachable); ``read`` lists the
    keys read."""

    bucket = "b"

    def __init__(self, objects: dict[str, Any], *, down: bool = False) -> None:
        self.objects = {k: json.dumps(v) for k, v in objects.items()}
        self.down = down
        self.read: list[str] = []

    def get_text(self, key: str) -> str | None:
        if self.down:
            raise ClientError({"Error": {"Code": "SlowDown", "Message": "slow"}}, "GetObject")
        self.read.append(key)
        return self.objects.get(key)

    def get_text_capped(self, key: str, max_bytes: int) -> str | None:
        return self.get_text(key)


def claim(key: str = "claims/support/t-1.json", **fields: Any) -> dict[str, Any]:
    return {CLAIM_CHECK_KEY: {"bucket": "b", "key": key, "custom_id": "t-1", **fields}}


NOW = dt.datetime(2026, 11, 28, tzinfo=dt.UTC)
BIG = "word " * 60_000


def read(body: Any, store: Any, config: Config) -> Intake:
    return read_record(record(body, sent=NOW), config, RESOURCES, store)


def test_a_claim_checks_ids_are_the_jobs(config: Config):
    """A producer stores the bare line and names the job in the claim check."""
    store = Claims({"claims/support/t-1.json": {"prompt": BIG}})
    intake = read(claim(batch_id="support"), store, config)
    assert intake.error is None and intake.job is not None
    assert (intake.batch_id, intake.custom_id, intake.job.batch_id) == ("support", "t-1", "support")
    assert BIG in intake.job.messages[-1].content
    # a stored line naming the same job is as good; a claim without a batch keeps the line's
    same = Claims(
        {"claims/support/t-1.json": {"custom_id": "t-1", "batch_id": "support", "prompt": "x"}}
    )
    assert read(claim(batch_id="support"), same, config).key == ("support", "t-1")
    # a claim without a batch is the message's (the day's default batch), key and all
    daily = "claims/daily-2026-11-28/t-1.json"
    assert read(claim(daily), Claims({daily: {"prompt": "x"}}), config).key == (
        "daily-2026-11-28",
        "t-1",
    )


@pytest.mark.parametrize(
    ("stored", "field", "named"),
    [
        ({"custom_id": "t-2", "prompt": "x"}, "custom_id", "'t-2'"),
        ({"batch_id": "other", "prompt": "x"}, "batch_id", "'other'"),
    ],
)
def test_a_claim_check_naming_another_job_than_its_object_is_refused(
    config: Config, stored: dict[str, Any], field: str, named: str
):
    store = Claims({"claims/support/t-1.json": stored})
    intake = read(claim(batch_id="support"), store, config)
    assert intake.job is None and intake.error is not None
    assert intake.key == ("support", "t-1")  # the error is filed under the claim's ids
    message = str(intake.error)
    assert message.startswith(f"job 't-1': chatbatch_claim_check.{field}: the claim check names")
    assert named in message and "s3://b/claims/support/t-1.json" in message


def test_a_claim_check_that_cannot_be_read_keeps_the_claims_ids(config: Config):
    missing = read(claim(batch_id="support"), Claims({}), config)
    assert missing.key == ("support", "t-1") and missing.error is not None
    assert "s3://b/claims/support/t-1.json not found" in str(missing.error)
    down = read(claim(batch_id="support"), Claims({}, down=True), config)
    assert down.key == ("support", "t-1") and down.transient and down.job is None
    elsewhere = read(
        {CLAIM_CHECK_KEY: {**claim()[CLAIM_CHECK_KEY], "bucket": "not-ours"}},
        Claims({"claims/support/t-1.json": {"prompt": "x"}}),
        config,
    )
    assert elsewhere.error is not None and elsewhere.key == ("daily-2026-11-28", "t-1")
    assert "chatbatch_claim_check.bucket: s3://not-ours/" in str(elsewhere.error)
    assert "data bucket 'b' only" in str(elsewhere.error)


def test_a_claim_check_with_unsafe_ids_is_refused(config: Config):
    """Any string is a custom_id, but its key is its hash: ``../../etc`` names no path."""
    store = Claims({"claims/x.json": {"prompt": "x"}})
    bad = read(claim("claims/x.json", custom_id="../../etc"), store, config)
    assert bad.error is not None and bad.key == ("daily-2026-11-28", "../../etc")
    assert store.read == []
    hashed = "~" + hashlib.sha256(b"../../etc").hexdigest()
    assert f"must name 'claims/daily-2026-11-28/{hashed}.json'" in str(bad.error)
    empty = read(claim("claims/x.json", custom_id=""), store, config)
    assert empty.error is not None and empty.key == ("daily-2026-11-28", "msg-m-1")
    expected = "job 'msg-m-1': chatbatch_claim_check.custom_id: not a valid"
    assert str(empty.error).startswith(expected)
    batch = read(claim("claims/x.json", batch_id="a/b"), store, config)
    assert batch.error is not None and "chatbatch_claim_check.batch_id" in str(batch.error)
    assert batch.key == ("daily-2026-11-28", "t-1")


@pytest.mark.parametrize(
    "key",
    [
        "claims/victim/t-1.json",  # another batch's claim, replayed
        "claims/support/t-2.json",  # another job's claim in the same batch
        "results/support/t-1.json",  # a result
        "batches/support/manifest.jsonl",  # a manifest
        "claims/support/t-1.json/../../results/support/t-1.json",
    ],
)
def test_a_claim_check_may_name_only_its_own_claim_object(config: Config, key: str):
    """The key must be ``claims/{batch}/{custom_id}.json`` of the claim's own ids: any
    other is refused naming the field, and nothing is read."""
    store = Claims({key: {"custom_id": "t-1", "batch_id": "support", "prompt": "secret"}})
    intake = read(claim(key, batch_id="support"), store, config)
    assert intake.job is None and intake.error is not None and store.read == []
    assert intake.key == ("support", "t-1")
    message = str(intake.error)
    assert message.startswith("job 't-1': chatbatch_claim_check.key: ")
    assert "must name 'claims/support/t-1.json'" in message and "secret" not in message
    # a claim that names no batch is the message's: another batch's claim is refused too
    replayed = read(claim("claims/support/t-1.json"), store, config)
    assert replayed.error is not None and store.read == []
    assert "must name 'claims/daily-2026-11-28/t-1.json'" in str(replayed.error)


class Metered:
    """An S3 client that reports how many bytes each GetObject sent back."""

    def __init__(self) -> None:
        self.s3 = boto3.client("s3", region_name="us-east-1")
        self.sent: list[int] = []

    def get_object(self, **kwargs: Any) -> Any:
        reply = self.s3.get_object(**kwargs)
        self.sent.append(reply["ContentLength"])
        return reply

    def __getattr__(self, name: str) -> Any:
        return getattr(self.s3, name)


def test_a_huge_claim_object_is_refused_without_being_read(aws: None, config: Config):
    """The read is capped before it happens: an object over ``limits.max_line_bytes`` is
    refused from its size, at most the cap (+1 byte) of it crosses the wire."""
    cap = 4096
    small = config.model_copy(
        update={"limits": config.limits.model_copy(update={"max_line_bytes": cap})}
    )
    s3 = Metered()
    s3.create_bucket(Bucket="data")
    store = Store(s3, "data")  # type: ignore[arg-type]
    key = "claims/support/t-1.json"
    s3.put_object(Bucket="data", Key=key, Body=json.dumps({"prompt": "x" * 1_000_000}).encode())
    body = {
        CLAIM_CHECK_KEY: {"bucket": "data", "key": key, "custom_id": "t-1", "batch_id": "support"}
    }
    huge = read_record(record(body, sent=NOW), small, RESOURCES, store)
    assert huge.job is None and huge.error is not None and huge.key == ("support", "t-1")
    assert "s3://data/claims/support/t-1.json is 1000014 bytes; the limit is 4096" in str(
        huge.error
    )
    assert s3.sent and max(s3.sent) <= cap + 1, f"read {s3.sent} bytes of a capped object"
    # under the cap it is read as before; an empty object is an invalid line, not a crash
    s3.put_object(Bucket="data", Key=key, Body=json.dumps({"prompt": "x" * 3000}).encode())
    fits = read_record(record(body, sent=NOW), small, RESOURCES, store)
    assert fits.job is not None and fits.key == ("support", "t-1")
    s3.put_object(Bucket="data", Key=key, Body=b"")
    empty = read_record(record(body, sent=NOW), small, RESOURCES, store)
    assert empty.error is not None and "not valid JSON" in str(empty.error)
