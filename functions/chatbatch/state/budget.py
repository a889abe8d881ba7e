"""The shared budget on DynamoDB: reserve the worst case before a call, settle after.

Design note
===========

**Items.** Per UTC day one partition ``budget#day#YYYY-MM-DD`` (the day is in the key,
so nothing resets at midnight) holds the ledger (``sk=ledger``) and the day's
reservations (``sk=resv#<job key>``); reservations not yet settled also have a small
marker in ``budget#open#YYYY-MM-DD`` (``sk=<job key>``) so finding the dead ones never
reads the settled ones. An optional per-batch ledger lives at ``budget#batch#<id>``;
a raised daily limit at ``budget#limits``. Amounts are integer nano-dollars.

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
not exist yet), its open marker and the ledger(s). A redelivered job finds its
reservation and gets it back (its deadline extended) instead of reserving twice; a job
already settled gets ``AlreadySettled``, so nobody calls the provider for it again. The
reservation names its ``owner`` (the copy of the job holding it: an SQS message id): a
second copy in flight gets ``HeldElsewhere`` and looks again later, until the owner's
claim expires and it may take over (compare-and-swap on the owner), so two copies (two
messages) never call the provider at once. One message delivered twice at once (SQS is
at-least-once) is one copy to this check.
Settle is a set of transaction items (reservation ``reserved -> settled``, marker gone,
ledgers) that the worker commits in the same transaction as the job's final state and
counters, so a settle happens once or not at all.

**One ledger write per invocation.** The new jobs of an invocation reserve together:
one transaction with each job's reservation and marker and one charge of their sum per
ledger (``reserve_many``). All or nothing: when anything stands in the way (a job holds
a reservation already, the sum does not fit) they reserve one by one as above. That
takes nine of ten reservation writes off the hot day ledger.

**Crashed workers.** A reservation expires ``reservation_ttl_s`` after it was made
(longer than any Lambda can run; the config checks it). When a reservation is refused
because reservations fill the budget, the worker reclaims the expired ones: a query of
the open markers of the last days (dead reservations from an earlier day still hold
their batch's ledger), at most every ``RECLAIM_EVERY_S`` per worker; then it tries once
more. Nothing leaks for longer than the TTL plus a refusal.

**Deferral, not failure.** Refused because ``spent + n`` passes the daily limit: retry
after the next UTC midnight (the worker re-sends the job with a delay, in steps of at
most 15 minutes). Over a batch's limit: retry in 5 minutes (the batch's budget may be
raised). Refused only because reservations in flight hold the rest (they usually settle
far below their worst case): retry in ``BUSY_RETRY_S``. A request whose worst case
alone is above ``request_cap_usd`` is refused for good.

**Raising the daily limit** without a deploy: ``set_daily_limit`` stores an override
item (``budget#limits``) that every worker reads at most every ``LIMIT_CACHE_S``.

**Scale.** Every settlement and every invocation's reservation writes the day ledger,
one item: DynamoDB
serialises transactions on it (a concurrent one is cancelled with ``TransactionConflict``
and retried here with a jittered backoff). That is a few hundred jobs per second, well
above what provider rate limits allow; more would need ledger shards like the limiter's.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from pydantic import BaseModel

from chatbatch.core.config import Config
from chatbatch.core.pricing import from_nanos, to_nanos
from chatbatch.core.resources import TABLE_PK, TABLE_SK, TABLE_TTL
from chatbatch.state.ddb import adds, int_of, n, s, transact

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

LEDGER_TTL_S = 40 * 86_400
BATCH_RETRY_S = 300.0
BUSY_RETRY_S = 15.0
HELD_RETRY_S = 15.0  # a copy of a job another copy is processing looks again after this
LIMIT_CACHE_S = 10.0
RECLAIM_EVERY_S = 30.0
MAX_TRANSACT_ITEMS = 100  # DynamoDB's limit per TransactWriteItems

Item = dict[str, Any]


class BudgetDeferred(Exception):
    """No budget now; ask again after ``retry_after_s`` seconds.

    ``scope`` is ``"day"`` or ``"batch"``; ``until`` the next UTC midnight when the day's
    spending itself is at the limit (None when the room may come back sooner).
    """

    def __init__(
        self,
        message: str,
        retry_after_s: float,
        *,
        scope: Literal["day", "batch"] = "day",
        until: dt.datetime | None = None,
    ) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.scope = scope
        self.until = until


class OverRequestCap(ValueError):
    """A request whose worst case alone is above the per-request cap."""


class AlreadySettled(Exception):
    """The job was already paid for: do not call the provider for it again."""

    def __init__(self, job_key: str, actual_nanos: int) -> None:
        super().__init__(f"job {job_key} was already settled at ${from_nanos(actual_nanos)}")
        self.job_key = job_key
        self.actual_nanos = actual_nanos


class HeldElsewhere(Exception):
    """Another copy of the job (another SQS message: a resend, a duplicate delivery) holds
    its reservation and may be calling the provider now: look again later, do not pay twice."""

    def __init__(self, job_key: str, retry_after_s: float) -> None:
        super().__init__(f"job {job_key} is being processed by another copy of it")
        self.job_key = job_key
        self.retry_after_s = retry_after_s


class Ask(NamedTuple):
    """A job's request for budget: its key, worst case and batch (with the batch's limit)."""

    job_key: str
    nanos: int
    batch_id: str | None = None
    batch_limit_nanos: int | None = None
    owner: str | None = None

    def held(self, day: str) -> Reservation:
        """The reservation this ask makes on ``day``."""
        return Reservation(
            job_key=self.job_key,
            day=day,
            nanos=self.nanos,
            batch_id=self.batch_id,
            batch_limit=self.batch_limit_nanos is not None,
            owner=self.owner,
        )


class Reservation(BaseModel):
    job_key: str
    day: str
    nanos: int
    batch_id: str | None = None
    batch_limit: bool = False  # whether the batch ledger carries it too
    owner: str | None = None  # the copy of the job (its first SQS message) that holds it
    resumed: bool = False  # it existed before this call: the job may have been called already


class DayUsage(BaseModel):
    day: str
    limit_usd: Decimal
    spent_usd: Decimal
    reserved_usd: Decimal


def utc_day(now: float) -> str:
    return f"{dt.datetime.fromtimestamp(now, dt.UTC):%Y-%m-%d}"


def next_midnight(now: float) -> dt.datetime:
    today = dt.datetime.fromtimestamp(now, dt.UTC).date()
    return dt.datetime.combine(today + dt.timedelta(days=1), dt.time(), dt.UTC)


def seconds_to_midnight(now: float) -> float:
    return next_midnight(now).timestamp() - now


def day_key(day: str) -> Item:
    return {TABLE_PK: s(f"budget#day#{day}"), TABLE_SK: s("ledger")}


def batch_ledger_key(batch_id: str) -> Item:
    return {TABLE_PK: s(f"budget#batch#{batch_id}"), TABLE_SK: s("ledger")}


def reservation_key(day: str, job_key: str) -> Item:
    return {TABLE_PK: s(f"budget#day#{day}"), TABLE_SK: s(f"resv#{job_key}")}


def open_key(day: str, job_key: str) -> Item:
    return {TABLE_PK: s(f"budget#open#{day}"), TABLE_SK: s(job_key)}


LIMITS_KEY = {TABLE_PK: s("budget#limits"), TABLE_SK: s("daily")}


class _Refused(Exception):
    """A ledger's condition failed: which one, and what it held."""

    def __init__(self, scope: Literal["day", "batch"], ledger: Mapping[str, Any] | None) -> None:
        self.scope = scope
        self.spent = int_of(ledger, "spent")
        self.committed = int_of(ledger, "committed")


class Budget:
    """The owner's money, shared by every worker. Thread-safe; one per worker process."""

    def __init__(
        self,
        client: DynamoDBClient,
        table: str,
        config: Config,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._ddb = client
        self._table = table
        self._config = config
        self._clock = clock
        self._sleep = sleep
        self._limit_cache: tuple[float, int] | None = None
        self._reclaimed_at = -RECLAIM_EVERY_S
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
        self._ddb.put_item(TableName=self._table, Item={**LIMITS_KEY, "limit": n(to_nanos(usd))})
        self._forget_limit()

    def _forget_limit(self) -> None:
        with self._lock:
            self._limit_cache = None

    def usage(self, day: str | None = None) -> DayUsage:
        """The day's spending, reservations in flight and limit (for ``status``)."""
        day = day or utc_day(self._clock())
        item = self._ddb.get_item(TableName=self._table, Key=day_key(day), ConsistentRead=True)
        ledger = item.get("Item", {})
        committed, spent = int_of(ledger, "committed"), int_of(ledger, "spent")
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
        owner: str | None = None,
    ) -> Reservation:
        """Reserve a job's worst case (nano-dollars).

        Raises ``BudgetDeferred`` (no room now: when to ask again), ``OverRequestCap``
        (never affordable), ``AlreadySettled`` (paid already: do not call again) or
        ``HeldElsewhere`` (another ``owner`` holds it and has not expired: look later).
        Idempotent per job, day and owner: the owner of a reservation gets it back.
        """
        cap = to_nanos(self._config.budget.request_cap_usd)
        if nanos > cap:
            raise OverRequestCap(
                f"job {job_key}: worst case ${from_nanos(nanos)} is above "
                f"budget.request_cap_usd ${from_nanos(cap)}; lower max_tokens or raise the cap"
            )
        now = self._clock()
        reservation = Ask(job_key, nanos, batch_id, batch_limit_nanos, owner).held(utc_day(now))
        try:
            return self._reserve(reservation, now, batch_limit_nanos)
        except _Refused as first:
            # Before saying no: the limit may have been raised, and dead workers'
            # reservations may be holding room. Look again, once.
            self._forget_limit()
            if not self._over(first, nanos, batch_limit_nanos):
                self._maybe_reclaim(now)
            try:
                return self._reserve(reservation, now, batch_limit_nanos)
            except _Refused as refused:
                raise self._deferral(reservation, refused, now, batch_limit_nanos) from None

    def _over(self, refused: _Refused, nanos: int, batch_limit: int | None) -> bool:
        """Whether the spending itself (not reservations in flight) leaves no room."""
        limit = self.daily_limit_nanos() if refused.scope == "day" else batch_limit or 0
        return refused.spent + nanos > limit

    def _deferral(
        self, r: Reservation, refused: _Refused, now: float, batch_limit: int | None
    ) -> BudgetDeferred:
        over = self._over(refused, r.nanos, batch_limit)
        if refused.scope == "batch":
            limit = from_nanos(batch_limit or 0)
            if over:
                return BudgetDeferred(
                    f"batch {r.batch_id} reached its budget ${limit}",
                    BATCH_RETRY_S,
                    scope="batch",
                )
            return BudgetDeferred(
                f"batch {r.batch_id}: its budget ${limit} is held by reservations in flight",
                BUSY_RETRY_S,
                scope="batch",
            )
        limit = from_nanos(self.daily_limit_nanos())
        if over:
            return BudgetDeferred(
                f"daily budget ${limit} reached for {r.day}",
                seconds_to_midnight(now),
                scope="day",
                until=next_midnight(now),
            )
        return BudgetDeferred(
            f"daily budget ${limit} for {r.day} is held by reservations in flight",
            BUSY_RETRY_S,
            scope="day",
        )

    def reserve_many(self, asks: Sequence[Ask]) -> dict[str, Reservation]:
        """Reserve several new jobs in one transaction, with one write per ledger for all.

        For the jobs of one invocation on their first delivery: all or nothing. ``{}``
        when any condition fails (a job already holds a reservation, a ledger has no room
        for the sum) or the jobs do not make one transaction; the caller then reserves
        job by job with ``reserve``, which sorts out each of those cases.
        """
        keys = {a.job_key for a in asks}
        cap = to_nanos(self._config.budget.request_cap_usd)
        limits = {
            a.batch_id: a.batch_limit_nanos
            for a in asks
            if a.batch_id is not None and a.batch_limit_nanos is not None
        }
        size = 2 * len(asks) + 1 + len(limits)
        if len(asks) < 2 or len(keys) < len(asks) or size > MAX_TRANSACT_ITEMS:
            return {}
        if any(a.nanos > cap for a in asks):
            return {}
        now = self._clock()
        held = {a.job_key: a.held(utc_day(now)) for a in asks}
        items = self._reservation_items(list(held.values()), limits, now)
        return {} if self._transact(items) else held

    def _reservation_items(
        self, held: list[Reservation], batch_limits: Mapping[str, int], now: float
    ) -> list[Item]:
        """Each reservation with its marker, then one charge per ledger for their sum: the
        day's, then each limited batch's (in that order: ``_reserve`` reads the reasons)."""
        items = [item for r in held for item in self._hold(r, now)]
        total = sum(r.nanos for r in held)
        items.append(self._charge(day_key(held[0].day), total, self.daily_limit_nanos(), now))
        for batch_id, limit in batch_limits.items():
            in_batch = sum(r.nanos for r in held if r.batch_limit and r.batch_id == batch_id)
            items.append(self._charge(batch_ledger_key(batch_id), in_batch, limit, now))
        return items

    def _hold(self, r: Reservation, now: float) -> list[Item]:
        """The reservation item (only if the job holds none yet) and its open marker."""
        reclaim_at = round(now + self._config.budget.reservation_ttl_s, 3)
        fields: Item = {"nanos": n(r.nanos), "reclaim_at": n(reclaim_at)}
        if r.batch_limit and r.batch_id:
            fields["batch_id"] = s(r.batch_id)
        if r.owner:
            fields["owner"] = s(r.owner)
        expires = {TABLE_TTL: n(int(now) + LEDGER_TTL_S)}
        return [
            {
                "Put": {
                    "TableName": self._table,
                    "Item": {
                        **reservation_key(r.day, r.job_key),
                        **fields,
                        **expires,
                        "state": s("reserved"),
                    },
                    "ConditionExpression": "attribute_not_exists(#pk)",
                    "ExpressionAttributeNames": {"#pk": TABLE_PK},
                    "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                }
            },
            {
                "Put": {
                    "TableName": self._table,
                    "Item": {**open_key(r.day, r.job_key), **fields, **expires},
                }
            },
        ]

    def _reserve(self, r: Reservation, now: float, batch_limit: int | None) -> Reservation:
        limits = {r.batch_id: batch_limit} if r.batch_id and batch_limit is not None else {}
        reasons = self._transact(self._reservation_items([r], limits, now))
        if not reasons:
            return r
        if reasons[0].get("Code") == "ConditionalCheckFailed":
            return self._existing(r, reasons[0].get("Item"), now, batch_limit)
        for index, scope in ((2, "day"), (3, "batch")):
            if len(reasons) > index and reasons[index].get("Code") == "ConditionalCheckFailed":
                raise _Refused(scope, reasons[index].get("Item"))  # type: ignore[arg-type]
        raise AssertionError(f"a condition failed, none of the budget's: {reasons}")

    def _existing(
        self, r: Reservation, item: Mapping[str, Any] | None, now: float, batch_limit: int | None
    ) -> Reservation:
        """The job's reservation of the day exists: its owner gets it back (another copy of
        the job is told to look later, until the owner's claim expires), or it is paid."""
        if item is None:  # gone in between (released or reclaimed): reserve anew
            return self._reserve(r, now, batch_limit)
        if item.get("state", {}).get("S") == "settled":
            raise AlreadySettled(r.job_key, int_of(item, "actual"))
        holder = item.get("owner", {}).get("S")
        expires_in = float(item.get("reclaim_at", {}).get("N", "0")) - now
        if r.owner and holder and holder != r.owner and expires_in > 0:
            raise HeldElsewhere(r.job_key, min(expires_in, HELD_RETRY_S))
        batch = item.get("batch_id", {}).get("S")
        held = Reservation(
            job_key=r.job_key,
            day=r.day,
            nanos=int_of(item, "nanos"),
            batch_id=batch or r.batch_id,
            batch_limit=batch is not None,
            owner=r.owner or holder,
            resumed=True,
        )
        if not self._extend(held, holder, now):
            raise HeldElsewhere(r.job_key, HELD_RETRY_S)  # another copy took it over first
        return held

    def _extend(self, r: Reservation, holder: str | None, now: float) -> bool:
        """A redelivered job keeps its reservation: not reclaimable for another TTL. The
        owner changes only from the ``holder`` seen (a copy taking over an expired claim)."""
        reclaim_at = n(round(now + self._config.budget.reservation_ttl_s, 3))
        names = {"#r": "reclaim_at", "#s": "state", "#o": "owner"}
        values: Item = {":r": reclaim_at, ":reserved": s("reserved")}
        update, owned = "SET #r = :r", "attribute_not_exists(#o)"
        if r.owner:
            update, values[":o"] = update + ", #o = :o", s(r.owner)
        if holder:
            owned, values[":holder"] = "#o = :holder", s(holder)
        reasons = self._transact(
            [
                {
                    "Update": {
                        "TableName": self._table,
                        "Key": reservation_key(r.day, r.job_key),
                        "UpdateExpression": update,
                        "ConditionExpression": f"#s = :reserved AND {owned}",
                        "ExpressionAttributeNames": names,
                        "ExpressionAttributeValues": values,
                    }
                },
                {
                    "Update": {
                        "TableName": self._table,
                        "Key": open_key(r.day, r.job_key),
                        "UpdateExpression": "SET #r = :r",
                        "ConditionExpression": "attribute_exists(#r)",
                        "ExpressionAttributeNames": {"#r": "reclaim_at"},
                        "ExpressionAttributeValues": {":r": reclaim_at},
                    }
                },
            ]
        )
        return not reasons

    def _charge(self, key: Item, nanos: int, limit: int, now: float) -> Item:
        """ADD committed :n, on the condition that it stays within the limit."""
        return {
            "Update": {
                "TableName": self._table,
                "Key": key,
                "UpdateExpression": "ADD #c :n SET #x = :x",
                "ConditionExpression": "(attribute_not_exists(#c) AND :n <= :limit) OR #c <= :room",
                "ExpressionAttributeNames": {"#c": "committed", "#x": TABLE_TTL},
                "ExpressionAttributeValues": {
                    ":n": n(nanos),
                    ":limit": n(limit),
                    ":room": n(limit - nanos),
                    ":x": n(int(now) + LEDGER_TTL_S),
                },
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
            }
        }

    # --- settle / release --------------------------------------------------------

    def _ledgers(self, r: Reservation) -> list[Item]:
        keys = [day_key(r.day)]
        if r.batch_limit and r.batch_id:
            keys.append(batch_ledger_key(r.batch_id))
        return keys

    def _add(self, key: Item, deltas: Mapping[str, int]) -> Item:
        return {"Update": {"TableName": self._table, "Key": key, **adds(deltas)}}

    def _close_open(self, r: Reservation) -> Item:
        return {"Delete": {"TableName": self._table, "Key": open_key(r.day, r.job_key)}}

    def settle_items(self, r: Reservation, actual_nanos: int) -> list[dict[str, Any]]:
        """TransactWriteItems that turn the reservation into the real cost, exactly once.

        The caller commits them with its own items (the job's final state); the first
        item fails its condition if the reservation was already settled or released.
        """
        settled: Item = {
            "Update": {
                "TableName": self._table,
                "Key": reservation_key(r.day, r.job_key),
                "UpdateExpression": "SET #s = :settled, #a = :a",
                "ConditionExpression": "#s = :reserved",
                "ExpressionAttributeNames": {"#s": "state", "#a": "actual"},
                "ExpressionAttributeValues": {
                    ":settled": s("settled"),
                    ":reserved": s("reserved"),
                    ":a": n(actual_nanos),
                },
            }
        }
        deltas = {"committed": actual_nanos - r.nanos, "spent": actual_nanos}
        return [
            settled,
            self._close_open(r),
            *(self._add(key, deltas) for key in self._ledgers(r)),
        ]

    def settle(self, r: Reservation, actual_nanos: int) -> bool:
        """Settle on its own; False if it was already settled (or released)."""
        return not self._transact(self.settle_items(r, actual_nanos))

    def release(self, r: Reservation, *, expired_before: float | None = None) -> bool:
        """Give a reservation back (the job was not sent). False if it was not held.

        With ``expired_before``, only if its deadline is before that time (reclaim).
        """
        condition = "#s = :reserved"
        names = {"#s": "state"}
        values: Item = {":reserved": s("reserved")}
        if expired_before is not None:
            condition += " AND #r < :now"
            names["#r"] = "reclaim_at"
            values[":now"] = n(expired_before)
        items: list[Item] = [
            {
                "Delete": {
                    "TableName": self._table,
                    "Key": reservation_key(r.day, r.job_key),
                    "ConditionExpression": condition,
                    "ExpressionAttributeNames": names,
                    "ExpressionAttributeValues": values,
                }
            },
            self._close_open(r),
            *(self._add(key, {"committed": -r.nanos}) for key in self._ledgers(r)),
        ]
        return not self._transact(items)

    def _transact(self, items: list[Item]) -> list[Item]:
        """Commit; the cancellation reasons if a condition failed ([] when committed)."""
        return transact(self._ddb, items, sleep=self._sleep)

    # --- crashed workers ----------------------------------------------------------

    def _maybe_reclaim(self, now: float) -> int:
        with self._lock:
            if now - self._reclaimed_at < RECLAIM_EVERY_S:
                return 0
            self._reclaimed_at = now
        return self.reclaim()

    def reclaim(self, day: str | None = None) -> int:
        """Give back reservations whose worker never settled them (crashed).

        Looks at one day's open reservations, or by default at those of the last days
        (an old one still holds its batch's ledger). Returns how many were reclaimed.
        """
        now = self._clock()
        if day is not None:
            days = [day]
        else:
            back = self._config.worker.retention_days + 1
            days = [utc_day(now - d * 86_400) for d in range(back)]
        return sum(self.release(r, expired_before=now) for d in days for r in self._expired(d, now))

    def _expired(self, day: str, now: float) -> Iterator[Reservation]:
        kwargs: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": "#pk = :pk",
            "FilterExpression": "#r < :now",
            "ExpressionAttributeNames": {"#pk": TABLE_PK, "#r": "reclaim_at"},
            "ExpressionAttributeValues": {":pk": s(f"budget#open#{day}"), ":now": n(now)},
        }
        while True:
            reply = self._ddb.query(**kwargs)
            for item in reply.get("Items", []):
                batch = item.get("batch_id", {}).get("S")
                yield Reservation(
                    job_key=item[TABLE_SK]["S"],
                    day=day,
                    nanos=int_of(item, "nanos"),
                    batch_id=batch,
                    batch_limit=batch is not None,
                )
            if "LastEvaluatedKey" not in reply:
                return
            kwargs["ExclusiveStartKey"] = reply["LastEvaluatedKey"]
