"""The journal: every write of the local stack's state as one JSON line, in the order
moto applied them (``Journal``, a ``tap.Listener``), and how it reads back (``records``).

The lines, by what they record:

- ``{"ddb": [[table, key, item], ...]}``: a DynamoDB write, as the items it left (an
  item ``null``: deleted), all in one line as the write was one (``images``);
- ``{"s3": "put", "b": bucket, "k": key, "t": text}`` (``"x"``: base64, for a body that
  is not UTF-8) and ``{"s3": "del", "b": bucket, "k": key}``;
- ``{"sqs": "add", "q": queue, "id": id, "body": ..., "attrs": {...}, "at": ms}``: a
  message in ``queue`` (by name), its message attributes, and when its delay ends (epoch
  ms, 0 if none); the same id added again is a move (to its DLQ). A copy sent again by a
  replay names the message it replaces: ``"was": old id``;
- ``{"sqs": "del", "ids": [...]}`` and ``{"sqs": "purge", "q": queue}``.

The journal keeps its ``Index`` current as it writes.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from moto.sqs.models import Message

from chatbatch.local.journal.appender import SyncedAppender
from chatbatch.local.journal.images import Change
from chatbatch.local.journal.index import Index, Record
from chatbatch.local.journal.tap import Listener

# (where the line starts, its length, the record; None for a line that is not one)
Line = tuple[int, int, Record | None]


def encode(record: Record) -> bytes:
    return json.dumps(record, separators=(",", ":")).encode() + b"\n"


class Journal(Listener):
    """Appends every write it is told about to ``path`` (see ``SyncedAppender``)."""

    def __init__(self, path: Path, index: Index | None = None, *, truncate: bool = False):
        self.appender = SyncedAppender(path, truncate=truncate)
        self.index = index or Index()

    def ddb(self, changes: list[Change]) -> None:
        self.appender.append(encode({"ddb": changes}))

    def s3_put(self, bucket: str, key: str, body: bytes) -> None:
        record: Record = {"s3": "put", "b": bucket, "k": key}
        try:
            record["t"] = body.decode()
        except UnicodeDecodeError:
            record["x"] = base64.b64encode(body).decode()
        self.s3_put_line(bucket, key, encode(record))

    def s3_put_line(self, bucket: str, key: str, line: bytes) -> None:
        """An S3 put, as the line that records it (copied from another journal)."""
        self.index.put(bucket, key, self.appender.append(line), len(line))

    def s3_delete(self, bucket: str, key: str) -> None:
        self.index.delete(bucket, key)
        self.appender.append(encode({"s3": "del", "b": bucket, "k": key}))

    def sqs_add(self, queue: str, message: Message) -> None:
        record: Record = {"sqs": "add", "q": queue, "id": message.id, "body": message.body}
        record.update(attrs=message.message_attributes, at=int(message.delayed_until))
        self.add(record)

    def add(self, record: Record) -> None:
        """A message in its queue (an ``add`` record, see above)."""
        self.index.message(record)
        self.appender.append(encode(record))

    def sqs_delete(self, message_ids: list[str]) -> None:
        self.index.deleted(message_ids)
        self.appender.append(encode({"sqs": "del", "ids": message_ids}))

    def sqs_purge(self, queue: str) -> None:
        self.index.purged(queue)
        self.appender.append(encode({"sqs": "purge", "q": queue}))

    def close(self) -> None:
        self.appender.close()


def s3_body(record: Record) -> bytes:
    """The body of an ``s3`` put line."""
    text = record.get("t")
    return text.encode() if text is not None else base64.b64decode(record["x"])


def records(path: Path) -> Iterator[Line]:
    """The journal's lines in order, with where each starts and its length."""
    if not path.exists():
        return
    offset = 0
    with path.open("rb") as lines:
        for line in lines:
            try:
                record: Any = json.loads(line)
            except ValueError:
                record = None
            yield offset, len(line), record if isinstance(record, dict) else None
            offset += len(line)
