"""The breaker: a model paused for every worker after an account-level error.

One item per model on the shared table, ``pk=breaker#<model>, sk=breaker``, present only
while the model is paused: ``reason`` (``auth``, ``forbidden``, ``model_not_found``,
``quota``), the provider's ``status``, ``code`` and ``message`` (the provider's own text,
which the client has already redacted: never the key), ``since`` (when it opened, kept
when another worker opens it again) and ``probe_at`` (when the next probe may go).

- ``open`` creates or refreshes the item; ``close`` deletes it (a probe that succeeded,
  or ``chatbatch resume``).
- ``get`` is what a job asks before calling the provider: cached per worker for
  ``cache_s`` seconds, so a busy worker reads the item a few times a minute, not per job.
- ``claim_probe`` elects one prober per ``probe_every_s`` across all workers: a
  conditional write moves ``probe_at`` forward, and only the writer that moved it probes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError
from pydantic import BaseModel

from chatbatch.core.resources import TABLE_PK, TABLE_SK
from chatbatch.state.cached_items import CachedItems
from chatbatch.state.ddb import error_code, n, plain, s, scan_items

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

PREFIX = "breaker#"
SORT = "breaker"
CACHE_S = 5.0
PROBE_EVERY_S = 60.0
MESSAGE_CHARS = 500


class Breaker(BaseModel):
    """An open breaker: why the model is paused, and since when (epoch seconds)."""

    model: str
    reason: str
    status: int | None = None
    code: str | None = None
    message: str = ""
    since: float
    probe_at: float


def breaker_key(model: str) -> dict[str, Any]:
    return {TABLE_PK: s(PREFIX + model), TABLE_SK: s(SORT)}


class Breakers(CachedItems):
    """The breakers of all models on the shared table, with a short per-worker cache."""

    def __init__(
        self,
        ddb: DynamoDBClient,
        table: str,
        *,
        clock: Callable[[], float] = time.time,
        cache_s: float | None = None,
        probe_every_s: float | None = None,
    ) -> None:
        super().__init__(ddb, table, clock=clock, cache_s=CACHE_S if cache_s is None else cache_s)
        self.probe_every_s = PROBE_EVERY_S if probe_every_s is None else probe_every_s
        self._cache: dict[str, tuple[float, Breaker | None]] = {}
        self._reading = threading.Lock()  # jobs that find the cache stale together: one read

    def cached(self, model: str) -> tuple[bool, Breaker | None]:
        """(True, the model's open breaker or None) while the last read is trusted, else
        (False, None): ``get`` must read (the worker's jobs ask here first, with no
        thread hop)."""
        cached = self._cache.get(model)
        if cached is not None and cached[0] > self._clock():
            return True, cached[1]
        return False, None

    def get(self, model: str, *, fresh: bool = False) -> Breaker | None:
        """The model's open breaker, or None (read at most once per ``cache_s``)."""
        with self._reading:
            if not fresh and (hit := self.cached(model))[0]:
                return hit[1]
            now = self._clock()
            reply = self._ddb.get_item(
                TableName=self._table, Key=breaker_key(model), ConsistentRead=True
            )
            item = reply.get("Item")
            breaker = self._decode(plain(item)) if item else None
            self._cache[model] = (now + self._cache_s, breaker)
            return breaker

    def open(
        self, model: str, reason: str, *, status: int | None, code: str | None, message: str
    ) -> Breaker:
        """Pause the model: the first opener sets ``since``; the first probe waits a period."""
        now = self._clock()
        names = {f"#{k}": k for k in ("reason", "message", "since", "probe_at", "status", "code")}
        values: dict[str, Any] = {
            ":reason": s(reason),
            ":message": s(message[:MESSAGE_CHARS]),
            ":now": n(now),
            ":probe": n(now + self.probe_every_s),
        }
        sets = [
            "#reason = :reason",
            "#message = :message",
            "#since = if_not_exists(#since, :now)",
            "#probe_at = if_not_exists(#probe_at, :probe)",
        ]
        removes = []
        for attr, value in (("status", status), ("code", code)):
            if value is None:
                removes.append(f"#{attr}")
            else:
                values[f":{attr}"] = n(value) if isinstance(value, int) else s(value)
                sets.append(f"#{attr} = :{attr}")
        expression = "SET " + ", ".join(sets) + (" REMOVE " + ", ".join(removes) if removes else "")
        reply = self._ddb.update_item(
            TableName=self._table,
            Key=breaker_key(model),
            UpdateExpression=expression,
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=values,
            ReturnValues="ALL_NEW",
        )
        breaker = self._decode(plain(reply["Attributes"]))
        self._cache[model] = (now + self._cache_s, breaker)
        return breaker

    def claim_probe(self, model: str) -> bool:
        """True for the one caller that may send the model's next probe request."""
        now = self._clock()
        try:
            self._ddb.update_item(
                TableName=self._table,
                Key=breaker_key(model),
                UpdateExpression="SET #p = :next",
                ConditionExpression="attribute_exists(#p) AND #p <= :now",
                ExpressionAttributeNames={"#p": "probe_at"},
                ExpressionAttributeValues={":now": n(now), ":next": n(now + self.probe_every_s)},
            )
        except ClientError as err:
            if error_code(err) != "ConditionalCheckFailedException":
                raise
            return False
        return True

    def close(self, model: str) -> bool:
        """Lift the pause; False if the model was not paused."""
        reply = self._ddb.delete_item(
            TableName=self._table, Key=breaker_key(model), ReturnValues="ALL_OLD"
        )
        self._cache[model] = (self._clock() + self._cache_s, None)
        return bool(reply.get("Attributes"))

    def list_open(self) -> list[Breaker]:
        """Every open breaker, oldest first."""
        items = scan_items(self._ddb, self._table, PREFIX, SORT, consistent=True)
        return sorted((self._decode(fields) for fields in items), key=lambda b: b.since)

    @staticmethod
    def _decode(fields: dict[str, Any]) -> Breaker:
        model = str(fields[TABLE_PK]).removeprefix(PREFIX)
        known = {k: v for k, v in fields.items() if k in Breaker.model_fields}
        return Breaker(model=model, **known)
