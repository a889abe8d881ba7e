"""A batch's completion, decided once: conditional marks on its ``batch#<id>/meta`` item.

A batch is complete when every job of its registered ``total`` is final (``finished``:
succeeded, failed, cancelled or dead-lettered). Its completion is numbered by the
``retried`` counter (0 until ``chatbatch retry`` sends a job again), so a batch retried and
completed again completes anew.

- ``claim``: ``completion_gen`` := the completion's number, ``completion_claimed_at`` :=
  now, on the condition that no claim of this completion exists, or that one exists but
  is stale (older than ``CLAIM_LEASE_S``) and its event was never sent. Of any number of
  workers that see the batch complete at once, one wins.
- ``sent``: ``completion_sent_gen`` and ``completed_at``, after the event was put.
- ``release``: the claim made stale at once after a put that failed, so the redelivery
  that follows claims it again without waiting out the lease.

See docs/events.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from chatbatch.state.batches import BatchInfo, batch_key
from chatbatch.state.ddb import error_code, n

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

CLAIM_LEASE_S = 60  # a claim older than this whose event was never sent may be taken over

_NAMES = {
    "#g": "completion_gen",
    "#c": "completion_claimed_at",
    "#sg": "completion_sent_gen",
    "#at": "completed_at",
}


def due(info: BatchInfo) -> bool:
    """Every job of a registered batch is final and this completion's event is not sent."""
    if not info.complete:
        return False
    return info.completion_sent_gen is None or info.completion_sent_gen < info.retried


class Completions:
    """The completion marks of batches on the shared table."""

    def __init__(self, ddb: DynamoDBClient, table: str) -> None:
        self._ddb = ddb
        self._table = table

    def claim(self, info: BatchInfo, now: float) -> bool:
        """Claim the event of ``info``'s completion; False when another worker holds it
        (or sent it)."""
        return self._update(
            info.batch_id,
            "SET #g = :gen, #c = :now",
            "attribute_not_exists(#g) OR #g < :gen OR (#g = :gen AND #c < :stale "
            "AND (attribute_not_exists(#sg) OR #sg < :gen))",
            {":gen": n(info.retried), ":now": n(now), ":stale": n(now - CLAIM_LEASE_S)},
        )

    def sent(self, batch_id: str, completion: int, now: float) -> None:
        """The completion's event was put."""
        self._update(
            batch_id, "SET #sg = :gen, #at = :now", None, {":gen": n(completion), ":now": n(now)}
        )

    def release(self, batch_id: str, completion: int, claimed_at: float) -> None:
        """Our claim, made stale (its put failed): the next look claims it again."""
        self._update(
            batch_id,
            "SET #c = :zero",
            "#g = :gen AND #c = :claimed",
            {":gen": n(completion), ":claimed": n(claimed_at), ":zero": n(0)},
        )

    def _update(
        self, batch_id: str, update: str, condition: str | None, values: dict[str, Any]
    ) -> bool:
        names = {k: v for k, v in _NAMES.items() if k in update or (condition and k in condition)}
        request: dict[str, Any] = {
            "TableName": self._table,
            "Key": batch_key(batch_id),
            "UpdateExpression": update,
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": values,
        }
        if condition:
            request["ConditionExpression"] = condition
        try:
            self._ddb.update_item(**request)
        except ClientError as err:
            if error_code(err) == "ConditionalCheckFailedException":
                return False
            raise
        return True
