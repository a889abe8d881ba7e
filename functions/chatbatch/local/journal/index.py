"""What a journal leads to, without replaying it: ``Index``.

Kept while a journal is read (``replay``) and while it is written (``journal``): for each
S3 object, where its last put line is in the file; for each SQS message still there, its
last ``add`` record. With the tables' items, that is the whole state, which is how
``compact`` rewrites a journal as the state it leads to.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Record = dict[str, Any]


@dataclass
class Index:
    objects: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)
    messages: dict[str, Record] = field(default_factory=dict)  # by message id

    def put(self, bucket: str, key: str, offset: int, length: int) -> None:
        """The object's put line is ``length`` bytes at ``offset``."""
        self.objects[(bucket, key)] = (offset, length)

    def delete(self, bucket: str, key: str) -> None:
        self.objects.pop((bucket, key), None)

    def message(self, record: Record) -> None:
        """A message added (sent, moved to a DLQ, or sent again in place of ``was``)."""
        self.messages.pop(record.get("was", ""), None)
        self.messages[record["id"]] = record

    def deleted(self, message_ids: list[str]) -> None:
        for message_id in message_ids:
            self.messages.pop(message_id, None)

    def purged(self, queue: str) -> None:
        for message_id in [i for i, m in self.messages.items() if m["q"] == queue]:
            del self.messages[message_id]
