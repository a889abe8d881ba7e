"""SQS record -> job: default batches by the day a message was first sent, and what a
hand-back carries."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from chatbatch.core.config import Config, Priority
from chatbatch.core.resources import Resources
from chatbatch.worker.intake import ATTR_BATCH, read_record

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
