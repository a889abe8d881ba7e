"""The journal: every write of the local stack's state as one JSON line, in the order
moto applied them (``Journal``, a ``tap.Listener``), and how a line reads back
(``records``).

The lines, by what they record:

- ``{"ddb": "UpdateItem", "p": {...}}``: a DynamoDB write, its parameters as sent;
- ``{"s3": "put", "b": bucket, "k": key, "t": text}`` (``"x"``: base64, for a body that
  is not UTF-8) and ``{"s3": "del", "b": bucket, "k": key}``;
- ``{"sqs": "add", "q": queue, "id": id, "body": ..., "attrs": {...}, "at": ms}``: a
  message in ``queue`` (by name), its message attributes, and when its delay ends (epoch
  ms, 0 if none); the same id added again is a move (to its DLQ). A copy sent again by a
  replay names the message it replaces: ``"was": old id``;
- ``{"sqs": "del", "ids": [...]}`` and ``{"sqs": "purge", "q": queue}``.

A DynamoDB line carries the request's own bytes (DynamoDB's wire format is its API's),
so recording it costs a copy, not a re-encoding.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from moto.sqs.models import Message

from chatbatch.local.journal.appender import SyncedAppender
from chatbatch.local.journal.tap import Listener

Record = dict[str, Any]


def _line(record: Record) -> bytes:
    return json.dumps(record, separators=(",", ":")).encode() + b"\n"


class Journal(Listener):
    """Appends every write it is told about to ``path`` (see ``SyncedAppender``)."""

    def __init__(self, path: Path) -> None:
        self.appender = SyncedAppender(path)

    def ddb(self, operation: str, request: bytes) -> None:
        if b"\n" in request or not request.startswith(b"{"):  # not as botocore sends it
            request = json.dumps(json.loads(request), separators=(",", ":")).encode()
        self.appender.append(b'{"ddb":"' + operation.encode() + b'","p":' + request + b"}\n")

    def s3_put(self, bucket: str, key: str, body: bytes) -> None:
        record: Record = {"s3": "put", "b": bucket, "k": key}
        try:
            record["t"] = body.decode()
        except UnicodeDecodeError:
            record["x"] = base64.b64encode(body).decode()
        self.appender.append(_line(record))

    def s3_delete(self, bucket: str, key: str) -> None:
        self.appender.append(_line({"s3": "del", "b": bucket, "k": key}))

    def sqs_add(self, queue: str, message: Message) -> None:
        self.message(
            queue, message.id, message.body, message.message_attributes, message.delayed_until
        )

    def message(
        self,
        queue: str,
        message_id: str,
        body: str,
        attrs: dict[str, Any],
        at: float,
        was: str | None = None,
    ) -> None:
        """A message in ``queue``; ``was``: the message it replaces (a replay's copy)."""
        record: Record = {"sqs": "add", "q": queue, "id": message_id, "body": body}
        record.update(attrs=attrs, at=int(at))
        if was is not None:
            record["was"] = was
        self.appender.append(_line(record))

    def sqs_delete(self, message_ids: list[str]) -> None:
        self.appender.append(_line({"sqs": "del", "ids": message_ids}))

    def sqs_purge(self, queue: str) -> None:
        self.appender.append(_line({"sqs": "purge", "q": queue}))

    def close(self) -> None:
        self.appender.close()


def s3_body(record: Record) -> bytes:
    """The body of an ``s3`` put line."""
    text = record.get("t")
    return text.encode() if text is not None else base64.b64decode(record["x"])


def records(path: Path) -> Iterator[Record | None]:
    """The journal's records in order; ``None`` for a line that does not read as one."""
    if not path.exists():
        return
    with path.open("rb") as lines:
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                yield None
                continue
            yield record if isinstance(record, dict) else None
