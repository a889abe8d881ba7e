"""A journal replayed into a fresh moto: the stack's state as the journal left it.

Each write is recorded as what it left (an item's after-image, an object's body), so
only the last one of each item and object matters: a replay reads the whole journal,
then puts each item and object it left, once (a replay starts from an empty moto, so
what was deleted is simply not put). ``refused`` counts what moto refuses on the way (a
table or bucket the stack does not have): it stays 0. The calls in flight when the
journal ended are known dead (``dead``).

SQS is not replayed call by call: a message's id is SQS's own, and receiving it is not
a write. What matters is which messages were still there: every message added and never
deleted is sent again, to the queue it was last in (a dead letter to its DLQ), with its
attributes and what is left of its delay. A copy carries the job-owner attribute
(``chatbatch-owner``) set to the id of the message it replaces when it had none: the
job's budget reservation names that owner, so the copy takes the job up at once instead
of waiting ``reservation_ttl_s`` for it as a stranger would. A job whose call was in
flight when the process died is then found armed: its call is booked at its worst case,
and it is called again (``worker/unread.py``). Each copy is journaled as replacing the
message it stands for, so the next replay sends it once.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
from aws_lambda_powertools import Logger
from moto.core.exceptions import JsonRESTError, ServiceException

from chatbatch.core.jobs import ATTR_BATCH, CLAIM_CHECK_KEY
from chatbatch.local.journal import backends, images
from chatbatch.local.journal.index import Index, Record
from chatbatch.local.journal.journal import Journal, Line, s3_body
from chatbatch.worker.intake import ATTR_OWNER

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

MAX_DELAY_S = 900  # SQS's limit
logger = Logger(service="chatbatch-local")
JobKey = tuple[str, str]


@dataclass
class ReplayReport:
    """What a replay found and did."""

    lines: int = 0
    writes: int = 0  # DynamoDB and S3 writes read
    refused: int = 0  # what moto refused to take back (0 unless the journal is damaged)
    unreadable: int = 0  # lines that were not a record
    resent: Counter[str] = field(default_factory=Counter)  # messages sent again, by queue
    pending_jobs: set[JobKey] = field(default_factory=set)  # the jobs those messages carry
    seconds: float = 0.0

    @property
    def resumed(self) -> bool:
        return self.lines > 0


def job_of(body: str, attrs: dict[str, Any]) -> JobKey | None:
    """(batch_id, custom_id) of the job a message carries, if it names both."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    claim = data.get(CLAIM_CHECK_KEY)
    source = claim if isinstance(claim, dict) else data
    carried = attrs.get(ATTR_BATCH, {}).get("StringValue")
    batch, custom_id = source.get("batch_id") or carried, source.get("custom_id")
    return (batch, custom_id) if isinstance(batch, str) and isinstance(custom_id, str) else None


def dead(item: images.Attrs) -> images.Attrs:
    """An item as this process must see it. A budget reservation whose call was in flight
    (``armed``) was armed by the process that wrote the journal, and that process is dead:
    this one holds the state's lock, which only its end released. Its arm time goes back
    to the epoch, so the job's next copy books the call at once instead of waiting
    ``worker.timeout_s`` for the worker that sent it to finish (``state/budget/budget.py``
    ``Budget._existing``)."""
    if item.get("armed", {}).get("BOOL") and "armed_at" in item:
        return item | {"armed_at": {"N": "0"}}
    return item


class Replay:
    """Reads a journal (``run``) and puts back into the current (moto) account what it
    left (``restore``); ``finish`` sends the messages left. Keeps the journal's ``index``."""

    def __init__(self) -> None:
        self.report = ReplayReport()
        self.index = Index()
        self._items: dict[tuple[str, str], images.Change] = {}  # the last image of each
        self._sqs: SQSClient = boto3.client("sqs")

    def run(self, lines: Iterable[Line]) -> None:
        started = time.monotonic()
        for offset, length, record in lines:
            self.report.lines += 1
            if record is None:
                self.report.unreadable += 1
            elif "ddb" in record:
                for change in record["ddb"]:
                    table, key, _ = change
                    self._items[(table, json.dumps(key, sort_keys=True))] = change
                self.report.writes += 1
            elif record.get("s3") == "put":
                self.index.put(record["b"], record["k"], offset, length)
                self.report.writes += 1
            elif record.get("s3") == "del":
                self.index.delete(record["b"], record["k"])
                self.report.writes += 1
            else:
                self._message(record)
        self.report.seconds += time.monotonic() - started

    def restore(self, path: Path) -> None:
        """Put each item and object the journal at ``path`` (the one ``run`` read) left."""
        if not self.report.resumed:
            return
        started = time.monotonic()
        try:
            items = [(t, key, dead(item)) for t, key, item in self._items.values() if item]
            images.apply(backends.dynamodb(), items)
            s3 = backends.s3()
            with path.open("rb") as journal:
                for (bucket, key), (offset, length) in self.index.objects.items():
                    journal.seek(offset)
                    s3.put_object(bucket, key, s3_body(json.loads(journal.read(length))))
        except (JsonRESTError, ServiceException) as err:
            self.report.refused += 1
            logger.warning(f"local state: moto refused what the journal left: {err}")
        self.report.seconds += time.monotonic() - started

    def _message(self, record: Record) -> None:
        kind = record.get("sqs")
        if kind == "add":
            self.index.message(record)
        elif kind == "del":
            self.index.deleted(record["ids"])
        elif kind == "purge":
            self.index.purged(record["q"])
        else:
            self.report.unreadable += 1

    def finish(self, journal: Journal) -> ReplayReport:
        """Send every message still there again, each journaled as replacing its original."""
        started = time.monotonic()
        by_queue: dict[str, list[Record]] = {}
        for record in self.index.messages.values():
            by_queue.setdefault(record["q"], []).append(record)
        for queue, records in by_queue.items():
            url = self._sqs.get_queue_url(QueueName=queue)["QueueUrl"]
            for start in range(0, len(records), 10):
                self._send(url, queue, records[start : start + 10], journal)
        self.report.seconds += time.monotonic() - started
        return self.report

    def _send(self, url: str, queue: str, records: list[Record], journal: Journal) -> None:
        now_ms = time.time() * 1000
        entries: list[Any] = []
        for i, record in enumerate(records):
            attrs = dict(record["attrs"])
            attrs.setdefault(ATTR_OWNER, {"DataType": "String", "StringValue": record["id"]})
            delay = min(MAX_DELAY_S, max(0, math.ceil((record["at"] - now_ms) / 1000)))
            entries.append(
                {"Id": str(i), "MessageBody": record["body"], "MessageAttributes": attrs}
                | ({"DelaySeconds": delay} if delay else {})
            )
        reply = self._sqs.send_message_batch(QueueUrl=url, Entries=entries)
        for sent in reply.get("Successful", []):
            i = int(sent["Id"])
            record, entry = records[i], entries[i]
            journal.add(
                record
                | {
                    "id": sent["MessageId"],
                    "attrs": entry["MessageAttributes"],
                    "was": record["id"],
                }
            )
            self.report.resent[queue] += 1
            job = job_of(record["body"], entry["MessageAttributes"])
            if job:
                self.report.pending_jobs.add(job)
        for failed in reply.get("Failed", []):
            self.report.refused += 1
            logger.warning(f"local state: a message could not be sent again: {failed}")
