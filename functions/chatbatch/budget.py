"""The shared budget on DynamoDB: reserve the worst case before a call, settle after.

Design note
===========

**Items.** Per UTC day one partition ``budget#day#YYYY-MM-DD`` (the day is in the key,
so nothing resets at midnight) holds the ledger (``sk=ledger``) and the day's
reservations (``sk=resv#<job key>``); an optional per-batch ledger lives at
``budget#batch#<id>``. Amounts are integer nano-dollars.

**No arithmetic in conditions.** A ledger keeps ``committed`` (reserved + spent) and
``spent``. A reservation of ``n`` is ``ADD committed :n IF committed <= limit - n``: the
client does the subtraction, DynamoDB compares one attribute with one value, and
concurrent reservations serialise on that attribute, so under any concurrency
``committed`` never passes the limit. Settling replaces the reservation by the real
cost (``ADD committed :real-n, spent :real``) and releasing removes it.

**The worst case is a true upper bound.** A byte-level BPE token covers at least one
byte, so the prompt never has more tokens than its UTF-8 bytes (plus the per-message
framing); the output never more than ``max_tokens``. Reserving at that bound (not at the
estimate) is what makes "settled never exceeds the limit" hold, not just usually hold.

**Exactly once.** Reserve is one transaction: the reservation item (condition: it does
not exist yet) and the ledger(s). A redelivered job finds its reservation and gets it
back instead of reserving twice. Settle is a set of transaction items (reservation
``reserved -> settled`` plus ledgers) that the worker commits in the same transaction
as the job's final state and counters, so a settle happens once or not at all.

**Crashed workers.** A reservation expires ``reservation_ttl_s`` after it was made
(longer than any Lambda can run). When a reservation is refused, the worker reclaims
the day's expired reservations (a query of the day's partition), re-reads the limit and
tries once more; nothing leaks for longer than the TTL.

**Deferral, not failure.** Over the daily limit: retry after the next UTC midnight (the
worker re-sends the job with a delay, in steps of at most 15 minutes). Over a batch's
limit: retry in 5 minutes (the batch's budget may be raised). A request whose worst case
alone is above ``request_cap_usd`` is refused for good.

**Raising the daily limit** without a deploy: ``set_daily_limit`` stores an override
item (``budget#limits``) that every worker reads at most every ``LIMIT_CACHE_S``.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from chatbatch.config import Config
from chatbatch.pricing import from_nanos, to_nanos
from chatbatch.resources import TABLE_PK, TABLE_SK, TABLE_TTL

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

LEDGER_TTL_S = 40 * 86_400
BATCH_RETRY_S = 300.0
LIMIT_CACHE_S = 10.0


class BudgetDeferred(Exception):
    """No budget now; ask again after ``retry_after_s`` seconds."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class OverRequestCap(ValueError):
    """A request whose worst case alone is above the per-request cap."""


class Reservation(BaseModel):
    job_key: str
    day: str
    nanos: int
    batch_id: str | None = None
    batch_limit: bool = False  # whether the batch ledger carries it too


class DayUsage(BaseModel):
    day: str
    limit_usd: Decimal
    spent_usd: Decimal
    reserved_usd: Decimal


def utc_day(now: float) -> str:
    return f"{dt.datetime.fromtimestamp(now, dt.UTC):%Y-%m-%d}"


def seconds_to_midnight(now: float) -> float:
    today = dt.datetime.fromtimestamp(now, dt.UTC).date()
    midnight = dt.datetime.combine(today + dt.timedelta(days=1), dt.time(), dt.UTC)
    return midnight.timestamp() - now


def _s(value: str) -> dict[str, Any]:
    return {"S": value}


def _n(value: int | float) -> dict[str, Any]:
    return {"N": str(value)}


def day_key(day: str) -> dict[str, Any]:
    return {TABLE_PK: _s(f"budget#day#{day}"), TABLE_SK: _s("ledger")}


def batch_ledger_key(batch_id: str) -> dict[str, Any]:
    return {TABLE_PK: _s(f"budget#batch#{batch_id}"), TABLE_SK: _s("ledger")}


def reservation_key(day: str, job_key: str) -> dict[str, Any]:
    return {TABLE_PK: _s(f"budget#day#{day}"), TABLE_SK: _s(f"resv#{job_key}")}


LIMITS_KEY = {TABLE_PK: _s("budget#limits"), TABLE_SK: _s("daily")}


class Budget:
    """The owner's money, shared by every worker. Thread-safe; one per worker process."""

    def __init__(
        self,
        client: DynamoDBClient,
        table: str,
        config: Config,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._ddb = client
        self._table = table
        self._config = config
        self._clock = clock
        self._limit_cache: tuple[float, int] | None = None
        self._lock = threading.Lock()

    # --- limits ------------------------------------------------------------------

    def daily_limit_nanos(self) -> int:
        now = time.monotonic()
        with self._lock:
            cached = self._limit_cache
        if cached and now - cached[0] < LIMIT_CACHE_S:
            return cached[1]
        item = self._ddb.get_item(TableName=self._table, Key=LIMITS_KEY).get("Item")
        limit = int(item["limit"]["N"]) if item else to_nanos(self._config.budget.daily_usd)
        with self._lock:
            self._limit_cache = (now, limit)
        return limit

    def set_daily_limit(self, usd: Decimal) -> None:
        self._ddb.put_item(TableName=self._table, Item={**LIMITS_KEY, "limit": _n(to_nanos(usd))})
        with self._lock:
            self._limit_cache = None

    def usage(self, day: str | None = None) -> DayUsage:
        day = day or utc_day(self._clock())
        item = self._ddb.get_item(TableName=self._table, Key=day_key(day), ConsistentRead=True).get(
            "Item", {}
        )
        committed = int(item.get("committed", {}).get("N", 0))
        spent = int(item.get("spent", {}).get("N", 0))
        return DayUsage(
            day=day,
            limit_usd=from_nanos(self.daily_limit_nanos()),
            spent_usd=from_nanos(spent),
            reserved_usd=from_nanos(committed - spent),
        )

    # --- reserve -----------------------------------------------------------------

    def reserve(
        self,
        job_key: str,
        nanos: int,
        *,
        batch_id: str | None = None,
        batch_limit_nanos: int | None = None,
    ) -> Reservation:
        """Reserve a job's worst case, or raise ``BudgetDeferred`` / ``OverRequestCap``.

        Idempotent per job and day: a job that already holds a reservation gets it back.
        """
        cap = to_nanos(self._config.budget.request_cap_usd)
        if nanos > cap:
            raise OverRequestCap(
                f"worst case ${from_nanos(nanos)} is above budget.request_cap_usd "
                f"${from_nanos(cap)}; lower max_tokens or raise the cap"
            )
        now = self._clock()
        day = utc_day(now)
        reservation = Reservation(
            job_key=job_key,
            day=day,
            nanos=nanos,
            batch_id=batch_id,
            batch_limit=batch_limit_nanos is not None,
        )
        try:
            self._reserve(reservation, now, batch_limit_nanos)
        except BudgetDeferred:
            # Before saying no: the limit may have been raised, and dead workers'
            # reservations may be holding room. Look again, once.
            with self._lock:
                self._limit_cache = None
            self.reclaim(day)
            self._reserve(reservation, now, batch_limit_nanos)
        return reservation

    def _reserve(self, r: Reservation, now: float, batch_limit: int | None) -> None:
        limit = self.daily_limit_nanos()
        item: dict[str, Any] = {
            **reservation_key(r.day, r.job_key),
            "state": _s("reserved"),
            "nanos": _n(r.nanos),
            "reclaim_at": _n(round(now + self._config.budget.reservation_ttl_s, 3)),
            TABLE_TTL: _n(int(now) + LEDGER_TTL_S),
        }
        if r.batch_limit and r.batch_id:
            item["batch_id"] = _s(r.batch_id)
        items: list[Any] = [
            {
                "Put": {
                    "TableName": self._table,
                    "Item": item,
                    "ConditionExpression": "attribute_not_exists(#pk)",
                    "ExpressionAttributeNames": {"#pk": TABLE_PK},
                }
            },
            self._charge(day_key(r.day), r.nanos, limit, now),
        ]
        if r.batch_limit and r.batch_id and batch_limit is not None:
            items.append(self._charge(batch_ledger_key(r.batch_id), r.nanos, batch_limit, now))
        try:
            self._ddb.transact_write_items(TransactItems=items)
        except self._ddb.exceptions.TransactionCanceledException as err:
            codes = [c.get("Code") for c in err.response.get("CancellationReasons", [])]
            if codes and codes[0] == "ConditionalCheckFailed":
                return  # this job already holds its reservation for today
            if len(codes) > 1 and codes[1] == "ConditionalCheckFailed":
                raise BudgetDeferred(
                    f"daily budget ${from_nanos(limit)} reached for {r.day}",
                    seconds_to_midnight(now),
                ) from None
            if len(codes) > 2 and codes[2] == "ConditionalCheckFailed":
                raise BudgetDeferred(
                    f"batch {r.batch_id} reached its budget ${from_nanos(batch_limit or 0)}",
                    BATCH_RETRY_S,
                ) from None
            raise

    def _charge(self, key: dict[str, Any], nanos: int, limit: int, now: float) -> dict[str, Any]:
        """ADD committed :n, on the condition that it stays within the limit."""
        return {
            "Update": {
                "TableName": self._table,
                "Key": key,
                "UpdateExpression": "ADD #c :n SET #x = :x",
                "ConditionExpression": "(attribute_not_exists(#c) AND :n <= :limit) OR #c <= :room",
                "ExpressionAttributeNames": {"#c": "committed", "#x": TABLE_TTL},
                "ExpressionAttributeValues": {
                    ":n": _n(nanos),
                    ":limit": _n(limit),
                    ":room": _n(limit - nanos),
                    ":x": _n(int(now) + LEDGER_TTL_S),
                },
            }
        }

    # --- settle / release --------------------------------------------------------

    def _ledgers(self, r: Reservation) -> list[dict[str, Any]]:
        keys = [day_key(r.day)]
        if r.batch_limit and r.batch_id:
            keys.append(batch_ledger_key(r.batch_id))
        return keys

    def settle_items(self, r: Reservation, actual_nanos: int) -> list[dict[str, Any]]:
        """TransactWriteItems that turn the reservation into the real cost, exactly once.

        The caller commits them with its own items (the job's final state); the first
        item fails its condition if the reservation was already settled or released.
        """
        items: list[dict[str, Any]] = [
            {
                "Update": {
                    "TableName": self._table,
                    "Key": reservation_key(r.day, r.job_key),
                    "UpdateExpression": "SET #s = :settled, #a = :a",
                    "ConditionExpression": "#s = :reserved",
                    "ExpressionAttributeNames": {"#s": "state", "#a": "actual"},
                    "ExpressionAttributeValues": {
                        ":settled": _s("settled"),
                        ":reserved": _s("reserved"),
                        ":a": _n(actual_nanos),
                    },
                }
            }
        ]
        for key in self._ledgers(r):
            items.append(
                {
                    "Update": {
                        "TableName": self._table,
                        "Key": key,
                        "UpdateExpression": "ADD #c :delta, #sp :a",
                        "ExpressionAttributeNames": {"#c": "committed", "#sp": "spent"},
                        "ExpressionAttributeValues": {
                            ":delta": _n(actual_nanos - r.nanos),
                            ":a": _n(actual_nanos),
                        },
                    }
                }
            )
        return items

    def settle(self, r: Reservation, actual_nanos: int) -> bool:
        """Settle on its own; False if it was already settled (or released)."""
        return self._commit(self.settle_items(r, actual_nanos))

    def release(self, r: Reservation) -> bool:
        """Give a reservation back (the job was not sent). False if it was not held."""
        items: list[Any] = [
            {
                "Delete": {
                    "TableName": self._table,
                    "Key": reservation_key(r.day, r.job_key),
                    "ConditionExpression": "#s = :reserved",
                    "ExpressionAttributeNames": {"#s": "state"},
                    "ExpressionAttributeValues": {":reserved": _s("reserved")},
                }
            }
        ]
        items += [
            {
                "Update": {
                    "TableName": self._table,
                    "Key": key,
                    "UpdateExpression": "ADD #c :minus",
                    "ExpressionAttributeNames": {"#c": "committed"},
                    "ExpressionAttributeValues": {":minus": _n(-r.nanos)},
                }
            }
            for key in self._ledgers(r)
        ]
        return self._commit(items)

    def _commit(self, items: list[Any]) -> bool:
        try:
            self._ddb.transact_write_items(TransactItems=items)
        except self._ddb.exceptions.TransactionCanceledException:
            return False
        return True

    def reclaim(self, day: str | None = None) -> int:
        """Give back the day's reservations whose worker never settled them (crashed)."""
        now = self._clock()
        day = day or utc_day(now)
        reclaimed = 0
        kwargs: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": "#pk = :pk AND begins_with(#sk, :resv)",
            "FilterExpression": "#s = :reserved AND reclaim_at < :now",
            "ExpressionAttributeNames": {"#pk": TABLE_PK, "#sk": TABLE_SK, "#s": "state"},
            "ExpressionAttributeValues": {
                ":pk": _s(f"budget#day#{day}"),
                ":resv": _s("resv#"),
                ":reserved": _s("reserved"),
                ":now": _n(now),
            },
        }
        while True:
            reply = self._ddb.query(**kwargs)
            for item in reply.get("Items", []):
                job_key = item[TABLE_SK]["S"].removeprefix("resv#")
                batch = item.get("batch_id", {}).get("S")
                r = Reservation(
                    job_key=job_key,
                    day=day,
                    nanos=int(item["nanos"]["N"]),
                    batch_id=batch,
                    batch_limit=batch is not None,
                )
                reclaimed += self.release(r)
            if "LastEvaluatedKey" not in reply:
                return reclaimed
            kwargs["ExclusiveStartKey"] = reply["LastEvaluatedKey"]
