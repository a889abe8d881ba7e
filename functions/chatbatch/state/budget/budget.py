"""``Budget``: the owner's money, shared by every worker. Reserve the worst case before a
call, settle after with the real cost, release what was not spent, reclaim what crashed
workers left.

Refused reservations look once more (the limit may have been raised, expired
reservations reclaimed) before deferring. The package docstring tells the guarantees
(**Exactly once**, **One ledger write per invocation**, **Crashed workers**, **Deferral,
not failure**, **Raising the daily limit**, **Scale**).
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal

from aws_lambda_powertools import Logger
from botocore.exceptions import BotoCoreError, ClientError

from chatbatch.core.config import Config
from chatbatch.core.days import utc_day
from chatbatch.core.pricing import from_nanos, to_nanos
from chatbatch.core.resources import TABLE_PK, TABLE_SK
from chatbatch.core.scale import plan
from chatbatch.state.batches import TransactionRefused
from chatbatch.state.budget.errors import (
    AlreadySettled,
    BudgetDeferred,
    HeldElsewhere,
    OverRequestCap,
    deferral,
)
from chatbatch.state.budget.ledger import (
    LIMITS_KEY,
    DayUsage,
    Item,
    add_item,
    batch_layout_key,
    batch_ledger_key,
    charge_item,
    day_key,
    layout_key,
    open_key,
    reservation_key,
    share,
)
from chatbatch.state.budget.parts import PART_HOLD_S, ingest_parts, part_key
from chatbatch.state.budget.reservations import (
    Ask,
    MarkerAt,
    Reservation,
    arm_item,
    call_over_item,
    close_marker_item,
    disarm_item,
    extend_items,
    group_marker_item,
    hold_items,
    release_items,
    reservation_of,
    settle_items,
    settle_parts,
    shards_of,
)
from chatbatch.state.ddb import MAX_TRANSACT_ITEMS, error_code, int_of, n, transact

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

logger = Logger(service="chatbatch", child=True)

HELD_RETRY_S = 15.0  # a copy of a job another copy is processing looks again after this
LIMIT_CACHE_S = 10.0
RECLAIM_EVERY_S = 30.0
ROOM_TRIES = 4  # a reservation refused by one shard of a sharded ledger looks this often


Scope = Literal["day", "batch"]


@dataclass(frozen=True)
class _Ledger:
    """One ledger a reservation charges (the day's, or a batch's: ``name``), as a set of
    shards: which one it charges (``at``) against that shard's slice of the limit."""

    scope: Scope
    name: str
    shards: int
    limit: int
    at: int

    def key(self, shard: int) -> Item:
        return (
            day_key(self.name, shard) if self.scope == "day" else batch_ledger_key(self.name, shard)
        )

    def carries(self, r: Reservation) -> bool:
        return self.scope == "day" or r.batch_id == self.name

    def charge(self, table: str, nanos: int, now: float) -> Item:
        slice_ = share(self.limit, self.shards, self.at)
        return charge_item(table, self.key(self.at), nanos, slice_, now)


class _Refused(Exception):
    """A ledger's condition failed: which one, and what it held."""

    def __init__(self, scope: Scope, ledger: Mapping[str, Any] | None) -> None:
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
        rng: random.Random | None = None,
    ) -> None:
        self._ddb = client
        self._table = table
        self._config = config
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._planned_shards = plan(config).ledger_shards
        self._layouts: dict[str, int] = {}
        self._batch_layouts: dict[str, int] = {}
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
        self.rebalance()  # lowered: shards over their new slices must not hide it

    def _forget_limit(self) -> None:
        with self._lock:
            self._limit_cache = None

    def usage(self, day: str | None = None) -> DayUsage:
        """The day's spending, reservations in flight and limit (for ``status``)."""
        day = day or utc_day(self._clock())
        shards = self._read_all([day_key(day, i) for i in range(self.shards(day, create=False))])
        committed = sum(int_of(ledger, "committed") for ledger in shards)
        spent = sum(int_of(ledger, "spent") for ledger in shards)
        return DayUsage(
            day=day,
            limit_usd=from_nanos(self.daily_limit_nanos()),
            spent_usd=from_nanos(spent),
            reserved_usd=from_nanos(committed - spent),
        )

    # --- shards ------------------------------------------------------------------

    def shards(self, day: str, *, create: bool = True) -> int:
        """How many shards the day's ledger and open markers have: fixed for the day by the
        first worker that reserves on it (``scale.target_jobs_per_s`` then), so workers
        deployed with another target agree with it until midnight. Without ``create`` a
        day nobody reserved on has 1."""
        with self._lock:
            known = self._layouts.get(day)
        if known is None:
            known = self._layout(day, create)
            if known is None:
                return 1
            with self._lock:
                self._layouts[day] = known
        return known

    def batch_shards(self, batch_id: str, planned: int) -> int:
        """How many shards a limited batch's ledger has: fixed by its first reservation
        (``planned``: what the batch was registered with then), as the day's count is. A
        batch registered unsharded and again with shards (``Batches.register`` gives it
        counter shards) keeps one ledger item: new slices of a limit its one item holds
        would give the same money twice."""
        with self._lock:
            known = self._batch_layouts.get(batch_id)
        if known is None:
            key = batch_layout_key(batch_id)
            item = self._ddb.get_item(TableName=self._table, Key=key, ConsistentRead=True)
            if "Item" in item:
                known = int(item["Item"]["shards"]["N"])
            else:
                known = self._fix_layout(key, batch_ledger_key(batch_id), planned)
            with self._lock:
                self._batch_layouts[batch_id] = known
        return known

    def _layout(self, day: str, create: bool) -> int | None:
        key = layout_key(day)
        item = self._ddb.get_item(TableName=self._table, Key=key, ConsistentRead=True)
        if "Item" in item:
            return int(item["Item"]["shards"]["N"])
        if not create:
            return None
        return self._fix_layout(key, day_key(day), self._planned_shards)

    def _fix_layout(self, key: Item, unsharded: Item, planned: int) -> int:
        """Write a ledger's count at ``key`` once: ``planned``, unless its ``unsharded``
        ledger exists already (a day or batch begun before shards were configured stays
        one item); the count another worker wrote first if it did."""
        if planned > 1:
            fresh: Item = {
                "ConditionCheck": {
                    "TableName": self._table,
                    "Key": unsharded,
                    "ConditionExpression": "attribute_not_exists(#pk)",
                    "ExpressionAttributeNames": {"#pk": TABLE_PK},
                }
            }
            reasons = self._transact([{"Put": self._layout_put(key, planned)}, fresh])
            if not reasons:
                return planned
            if reasons[0].get("Code") == "ConditionalCheckFailed":  # another worker's
                return int(reasons[0]["Item"]["shards"]["N"])
        try:
            self._ddb.put_item(**self._layout_put(key, 1))
        except ClientError as err:
            if error_code(err) != "ConditionalCheckFailedException":
                raise
            return int(err.response["Item"]["shards"]["N"])  # type: ignore[typeddict-item]
        return 1

    def _layout_put(self, key: Item, shards: int) -> Any:
        return {
            "TableName": self._table,
            "Item": {**key, "shards": n(shards)},
            "ConditionExpression": "attribute_not_exists(#pk)",
            "ExpressionAttributeNames": {"#pk": TABLE_PK},
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        }

    def _read_all(self, keys: Sequence[Item]) -> list[Mapping[str, Any]]:
        """The items at ``keys``, in that order (``{}`` where none): consistent reads."""
        if len(keys) == 1:
            got = self._ddb.get_item(TableName=self._table, Key=keys[0], ConsistentRead=True)
            return [got.get("Item", {})]
        found: dict[tuple[str, str], Mapping[str, Any]] = {}
        pending: Any = {self._table: {"Keys": list(keys), "ConsistentRead": True}}
        while pending:
            reply = self._ddb.batch_get_item(RequestItems=pending)
            for item in reply["Responses"].get(self._table, []):
                found[(item[TABLE_PK]["S"], item[TABLE_SK]["S"])] = item
            pending = reply.get("UnprocessedKeys") or None
        return [found.get((k[TABLE_PK]["S"], k[TABLE_SK]["S"]), {}) for k in keys]

    def _ledgers(self, r: Reservation, batch_limit: int | None, batch_shards: int) -> list[_Ledger]:
        """The ledgers ``r`` charges: the day's, then its batch's if the batch is limited."""
        limit = self.daily_limit_nanos()
        ledgers = [_Ledger("day", r.day, self.shards(r.day), limit, r.shard)]
        if r.batch_id is not None and batch_limit is not None:
            ledgers.append(_Ledger("batch", r.batch_id, batch_shards, batch_limit, r.batch_shard))
        return ledgers

    def _make_room(self, refused: _Refused, ledger: _Ledger, nanos: int) -> tuple[int, _Refused]:
        """A shard of a sharded ledger refused ``nanos``: the shard to try next, and the
        ledger's refusal with its totals (what stands if the next try fails too). The
        shard: one with room for ``nanos``; else the shard tried, after one transaction
        that moves every other shard's room to it (each slice moved is charged to its
        shard on the condition that the shard stays within its slice of the limit, and
        taken off the tried shard's ``committed``: the sum of the shards' commitments is
        unchanged and each stays within its slice, so the sum never passes the limit).
        Raises that refusal when all the shards together have no room."""
        if ledger.shards == 1:
            raise refused
        items, slices, rooms = self._rooms(ledger)
        committed = sum(int_of(item, "committed") for item in items)
        spent = sum(int_of(item, "spent") for item in items)
        totals = _Refused(ledger.scope, {"committed": n(committed), "spent": n(spent)})
        if sum(rooms) < nanos:  # a shard over its slice (a lowered limit) holds the others'
            raise totals
        now = self._clock()
        if any(room < 0 for room in rooms):
            self._spread(ledger, rooms, now)  # refused: something moved; the next try reads
            return ledger.at, totals
        if fits := [i for i, room in enumerate(rooms) if room >= nanos]:
            return self._rng.choice(fits), totals
        moves = {i: room for i, room in enumerate(rooms) if i != ledger.at and room > 0}
        given = [
            charge_item(self._table, ledger.key(i), m, slices[i], now) for i, m in moves.items()
        ]
        taken = add_item(self._table, ledger.key(ledger.at), {"committed": -sum(moves.values())})
        self._transact([*given, taken])  # refused: something moved; the next try reads again
        return ledger.at, totals

    def _spread(self, ledger: _Ledger, rooms: Sequence[int], now: float) -> None:
        """Move what shards hold past their slices (the limit was lowered under them, or a
        settle came above its reservation) onto the shards with room, as far as it goes:
        each amount is a conditional charge on its receiving shard and taken off a shard
        over its slice; the sum is unchanged.
        Afterwards no shard is over its slice while another has room, so a charge that
        one shard's condition lets through fits the shards' sum too."""
        excess = {i: -room for i, room in enumerate(rooms) if room < 0}
        room = {i: r for i, r in enumerate(rooms) if r > 0}
        moving = min(sum(excess.values()), sum(room.values()))
        if moving <= 0:
            return
        items: list[Item] = []
        for amounts, charge in ((room, True), (excess, False)):
            left = moving
            for i, amount in amounts.items():
                m = min(amount, left)
                left -= m
                if m and charge:
                    slice_ = share(ledger.limit, ledger.shards, i)
                    items.append(charge_item(self._table, ledger.key(i), m, slice_, now))
                elif m:
                    items.append(add_item(self._table, ledger.key(i), {"committed": -m}))
        self._transact(items)

    def rebalance(self, day: str | None = None) -> None:
        """After the daily limit was lowered, or a settle above its reservation: the day's
        shards' excess over their slices moved onto the shards with room (``_spread``)."""
        day = day or utc_day(self._clock())
        count = self.shards(day, create=False)
        if count == 1:
            return
        ledger = _Ledger("day", day, count, self.daily_limit_nanos(), 0)
        self._spread(ledger, self._rooms(ledger)[2], self._clock())

    def _rooms(self, ledger: _Ledger) -> tuple[list[Mapping[str, Any]], list[int], list[int]]:
        """A sharded ledger's shards (consistent reads), their slices of the limit and the
        room each has left (below zero: a shard over its slice)."""
        items = self._read_all([ledger.key(i) for i in range(ledger.shards)])
        slices = [share(ledger.limit, ledger.shards, i) for i in range(ledger.shards)]
        rooms = [s_ - int_of(item, "committed") for s_, item in zip(slices, items, strict=True)]
        return items, slices, rooms

    # --- reserve -----------------------------------------------------------------

    def reserve(
        self,
        job_key: str,
        nanos: int,
        *,
        batch_id: str | None = None,
        batch_limit_nanos: int | None = None,
        owner: str | None = None,
        batch_shards: int = 1,
    ) -> Reservation:
        """Reserve a job's worst case (nano-dollars).

        Raises ``BudgetDeferred`` (no room now: when to ask again), ``OverRequestCap``
        (never affordable), ``AlreadySettled`` (paid already: do not call again) or
        ``HeldElsewhere`` (another ``owner`` holds it and has not expired: look later).
        Idempotent per job and owner, whatever the day: the owner of a reservation gets it
        back, with the day it was made (whose ledger holds the money). ``batch_shards``:
        how many shards the batch's ledger has (what the batch was registered with).
        """
        cap = to_nanos(self._config.budget.request_cap_usd)
        if nanos > cap:
            raise OverRequestCap(
                f"job {job_key}: worst case ${from_nanos(nanos)} is above "
                f"budget.request_cap_usd ${from_nanos(cap)}; lower max_tokens or raise the cap"
            )
        now = self._clock()
        if batch_id is not None and batch_limit_nanos is not None:
            batch_shards = self.batch_shards(batch_id, batch_shards)
        ask = Ask(job_key, nanos, batch_id, batch_limit_nanos, owner, batch_shards)
        reservation = self._held(ask, utc_day(now))
        try:
            return self._reserve(reservation, now, batch_limit_nanos, batch_shards)
        except _Refused as first:
            # Before saying no: the limit may have been raised, and dead workers'
            # reservations may be holding room. Look again, once.
            self._forget_limit()
            if not self._over(first, nanos, batch_limit_nanos):
                self._maybe_reclaim(now)
            try:
                return self._reserve(reservation, now, batch_limit_nanos, batch_shards)
            except _Refused as refused:
                raise self._deferral(reservation, refused, now, batch_limit_nanos) from None

    def _held(self, ask: Ask, day: str, marker: str | None = None) -> Reservation:
        """``ask``'s reservation on ``day``, on a shard of each ledger picked at random."""
        shard = self._rng.randrange(self.shards(day))
        held = ask.held(day, shard, self._rng.randrange(ask.batch_shards))
        return held.model_copy(update={"marker": marker}) if marker else held

    def _over(self, refused: _Refused, nanos: int, batch_limit: int | None) -> bool:
        """Whether the spending itself (not reservations in flight) leaves no room."""
        limit = self.daily_limit_nanos() if refused.scope == "day" else batch_limit or 0
        return refused.spent + nanos > limit

    def _deferral(
        self, r: Reservation, refused: _Refused, now: float, batch_limit: int | None
    ) -> BudgetDeferred:
        limit = (batch_limit or 0) if refused.scope == "batch" else self.daily_limit_nanos()
        over = self._over(refused, r.nanos, batch_limit)
        alone = r.nanos if refused.scope == "day" else 0  # above the limit alone: no pause
        return deferral(
            refused.scope, r.batch_id, r.day, limit, over=over, now=now, job_nanos=alone
        )

    def reserve_many(
        self, asks: Sequence[Ask], *, armed_for: str | None = None
    ) -> dict[str, Reservation]:
        """Reserve several new jobs in one transaction, with one write per ledger for all.

        For the jobs of one invocation on their first delivery: all or nothing, for as
        many of them as one transaction holds (the first ones; the others are not in the
        result and reserve alone). ``{}`` when any condition fails (a job already holds a
        reservation, a ledger has no room for the sum) or the jobs do not make one
        transaction; the caller then reserves job by job with ``reserve``, which sorts
        out each of those cases. The group charges one shard of each sharded ledger
        (one batch's jobs the same shard).

        With ``armed_for`` (the flush id of the invocation that will call) each
        reservation is made armed for that invocation's call (``Reservation.armed_unsent``):
        its ``arm`` writes nothing, one write per job fewer. A worker that dies before
        the call leaves it armed: it is then booked at its worst case like a call that
        went out (over-booked, never under), and ``disarm`` unarms one whose job leaves
        unsent keeping it.
        """
        asks = _fitting(asks)
        keys = {a.job_key for a in asks}
        cap = to_nanos(self._config.budget.request_cap_usd)
        if len(asks) < 2 or len(keys) < len(asks):
            return {}
        if any(a.nanos > cap for a in asks):
            return {}
        now = self._clock()
        armed: dict[str, Any] = {}
        if armed_for is not None:
            armed = {"armed": True, "armed_at": round(now, 3), "flush": armed_for}

        def arm() -> dict[str, Any]:  # each its own token
            return armed | {"arm_token": uuid.uuid4().hex, "armed_unsent": True} if armed else {}

        held, items, _ = self._group(asks, now, self._config.budget.reservation_ttl_s, arm)
        try:
            refused = self._transact(items)
        except Exception:
            if armed_for is not None:  # it may have committed, its reply lost: unarmed
                self._disarm_all(held.values())
            raise
        return {} if refused else held

    def _group(
        self,
        asks: Sequence[Ask],
        now: float,
        ttl_s: int,
        extra: Callable[[], dict[str, Any]],
    ) -> tuple[dict[str, Reservation], list[Item], list[_Ledger]]:
        """The reservations of ``asks`` made together (by job key; ``extra`` fields each),
        the transaction that makes them (their group's open marker, each reservation, one
        charge per ledger for its sum: one shard of each sharded ledger, one batch's
        reservations the same shard) and those ledgers, in the transaction's order."""
        limits = {
            a.batch_id: (a.batch_limit_nanos, self.batch_shards(a.batch_id, a.batch_shards))
            for a in asks
            if a.batch_id is not None and a.batch_limit_nanos is not None
        }
        day = utc_day(now)
        marker = f"group#{uuid.uuid4().hex}"
        shard = self._rng.randrange(self.shards(day))
        batch_shards = {b: self._rng.randrange(count) for b, (_, count) in limits.items()}
        held = {
            a.job_key: a.held(day, shard, batch_shards.get(a.batch_id or "", 0)).model_copy(
                update={"marker": marker} | extra()
            )
            for a in asks
        }
        group = group_marker_item(self._table, list(held.values()), now, ttl_s)
        ledgers = {
            ledger: None
            for a in asks
            for ledger in self._ledgers(held[a.job_key], *limits.get(a.batch_id or "", (None, 1)))
        }
        items = self._reservation_items(list(held.values()), list(ledgers), now, ttl_s)
        return held, [group, *items], list(ledgers)

    def reserve_part(self, asks: Sequence[Ask]) -> dict[str, Reservation]:
        """Reserve for a provider batch's part (the batch route): ``asks`` one per batch
        among its jobs (``parts.part_ask``: the batch's jobs' worst cases at the batch
        prices, summed), made together; by batch id. Never reclaimed by ``reclaim``: the
        gatherer settles them as answers come and closes them with the part
        (``state/budget/parts.py``). Raises ``BudgetDeferred`` when a ledger has no room
        for its sum: nothing is reserved."""
        now = self._clock()
        held, items, ledgers = self._group(asks, now, PART_HOLD_S, dict)
        if len(items) > MAX_TRANSACT_ITEMS:  # the gatherer makes parts of fewer batches
            raise ValueError(f"a part's {len(asks)} batches do not make one transaction")
        reasons = self._transact(items)
        if not reasons:
            return {r.batch_id or "": r for r in held.values()}
        first = 1 + len(held)  # after the group's marker and each reservation
        for ledger, reason in zip(ledgers, reasons[first:], strict=False):
            if reason.get("Code") == "ConditionalCheckFailed":
                carried = [r for r in held.values() if ledger.carries(r)]
                total = carried[0].model_copy(update={"nanos": sum(r.nanos for r in carried)})
                limit = ledger.limit if ledger.scope == "batch" else None
                raise self._deferral(total, _Refused(ledger.scope, reason.get("Item")), now, limit)
        raise TransactionRefused(f"a part's reservations exist already: {reasons}")

    def part_held(self, part_id: str, batches: Iterable[str]) -> dict[str, Reservation]:
        """A part's reservations that exist (strongly consistent), by batch id: what
        ``reserve_part`` made for it, found from its record's batches after a crash."""
        held: dict[str, Reservation] = {}
        for batch_id in batches:
            item = self._ddb.get_item(
                TableName=self._table,
                Key=reservation_key(part_key(part_id, batch_id)),
                ConsistentRead=True,
            ).get("Item")
            if item is not None:
                held[batch_id] = reservation_of(item)
        return held

    def close_part(self, held: Iterable[Reservation]) -> bool:
        """A part is done: give back what each of its reservations still holds (read
        back, and released only while it holds that); the last release deletes its
        group's marker in the same transaction, so a gatherer that dies between two of
        these writes leaves the marker with a reservation the next run finds (from the
        part's record) and closes, never a marker alone that nothing would close. False
        if one had moved meanwhile (nothing of it written): close again."""
        current: list[Reservation] = []
        for r in held:
            item = self._ddb.get_item(
                TableName=self._table, Key=reservation_key(r.job_key), ConsistentRead=True
            ).get("Item")
            if item is not None:  # else closed already
                current.append(reservation_of(item))  # what it holds now
        closed = True
        for i, r in enumerate(current):
            items = release_items(self._table, r, None, holding=True)
            if closed and i == len(current) - 1 and r.marker is not None:
                items.append(self.close_marker_item(r.marker_at()))
            closed &= not self._transact(items)
        return closed

    def _disarm_all(self, held: Iterable[Reservation]) -> None:
        """Unarm reservations of a group whose transaction raised: if it committed (its
        reply lost), each job finds its reservation unarmed and takes it back, rather
        than waiting out a call that never went out and booking it; if it did not, each
        write finds nothing. Best effort: one that fails stays armed (over-booked)."""
        for r in held:
            try:
                self.disarm(r)
            except (ClientError, BotoCoreError):
                logger.exception("could not unarm a group's reservation", extra={"job": r.job_key})

    def close_marker_item(self, at: MarkerAt) -> Item:
        """The item that deletes a group's open marker, for a caller that closes every
        reservation it names in the same transaction (``worker/finals.py``)."""
        return close_marker_item(self._table, at)

    def _reservation_items(
        self,
        held: list[Reservation],
        ledgers: Sequence[_Ledger],
        now: float,
        ttl_s: int | None = None,
    ) -> list[Item]:
        """Each reservation with its marker, then one charge per ledger for the sum of what
        it carries: the day's, then each limited batch's (in that order: ``_reserve``
        reads the reasons)."""
        ttl_s = self._config.budget.reservation_ttl_s if ttl_s is None else ttl_s
        items = [item for r in held for item in hold_items(self._table, r, now, ttl_s)]
        for ledger in ledgers:
            carried = sum(r.nanos for r in held if ledger.carries(r))
            items.append(ledger.charge(self._table, carried, now))
        return items

    def _reserve(
        self, r: Reservation, now: float, batch_limit: int | None, batch_shards: int
    ) -> Reservation:
        """Reserve ``r``; a shard of a sharded ledger that has no room for it makes room
        or names another (``_make_room``), a few times before the refusal stands."""
        for attempt in range(ROOM_TRIES):
            ledgers = self._ledgers(r, batch_limit, batch_shards)
            reasons = self._transact(self._reservation_items([r], ledgers, now))
            if not reasons:
                return r
            if reasons[0].get("Code") == "ConditionalCheckFailed":
                return self._existing(r, reasons[0].get("Item"), now, batch_limit, batch_shards)
            first = 2 if r.marker is None else 1  # after the reservation and its own marker
            refused = [
                (ledger, _Refused(ledger.scope, reason.get("Item")))
                for ledger, reason in zip(ledgers, reasons[first:], strict=False)
                if reason.get("Code") == "ConditionalCheckFailed"
            ]
            if not refused:
                raise AssertionError(f"a condition failed, none of the budget's: {reasons}")
            ledger, why = refused[0]
            moved, totals = self._make_room(why, ledger, r.nanos)
            if attempt == ROOM_TRIES - 1:
                raise totals  # room in the shards together, taken each time: a busy ledger
            r = r.model_copy(update={"shard" if ledger.scope == "day" else "batch_shard": moved})
        raise AssertionError("unreachable")

    def _existing(
        self,
        r: Reservation,
        item: Mapping[str, Any] | None,
        now: float,
        batch_limit: int | None,
        batch_shards: int,
    ) -> Reservation:
        """The job's reservation exists (made today or on an earlier day): its owner gets it
        back (another copy of the job is told to look later, until the owner's claim
        expires), or it is paid. It keeps the day it was made: that day's ledger holds its
        money, and its settle or release goes there."""
        if item is None:  # gone in between (released or reclaimed): reserve anew
            return self._reserve(r, now, batch_limit, batch_shards)
        if item.get("state", {}).get("S") == "settled":
            raise AlreadySettled(r.job_key, int_of(item, "actual"))
        holder = item.get("owner", {}).get("S")
        expires_in = float(item.get("reclaim_at", {}).get("N", "0")) - now
        if r.owner and holder and holder != r.owner and expires_in > 0:
            raise HeldElsewhere(r.job_key, min(expires_in, HELD_RETRY_S))
        stored = reservation_of(item)
        held = stored.model_copy(
            update={
                "batch_id": stored.batch_id or r.batch_id,
                "owner": r.owner or holder,
                "resumed": True,
            }
        )
        if held.armed and held.armed_at is not None and expires_in > 0:
            # Its call went out: a copy that comes while the worker that sent it may still
            # be alive (another message of the same copy: an SQS duplicate, a hand-back
            # re-sent before its original was deleted) waits; once no Lambda can still be
            # running, that worker is dead and the call is booked (``worker/unread.py``).
            # (A claim that expired is a dead worker's: ``reservation_ttl_s`` is longer.)
            alive_for = held.armed_at + self._config.worker.timeout_s - now
            if alive_for > 0:
                raise HeldElsewhere(r.job_key, min(alive_for + 1, HELD_RETRY_S))
        if not self._extend(held, holder, now):
            raise HeldElsewhere(r.job_key, HELD_RETRY_S)  # another copy took it over first
        return held

    def _extend(self, r: Reservation, holder: str | None, now: float) -> bool:
        """A redelivered job keeps its reservation: not reclaimable for another TTL. The
        owner changes only from the ``holder`` seen (a copy taking over an expired claim)."""
        return not self._transact(
            extend_items(self._table, r, holder, now, self._config.budget.reservation_ttl_s)
        )

    # --- settle / release --------------------------------------------------------

    def settle_items(self, r: Reservation, actual_nanos: int) -> list[dict[str, Any]]:
        """The items that settle ``r`` at its real cost, exactly once, for the caller to
        commit with its own (the job's final state): ``reservations.settle_items``."""
        return settle_items(self._table, r, actual_nanos)

    def settle_parts(
        self, r: Reservation, actual_nanos: int
    ) -> tuple[list[Item], list[tuple[Item, dict[str, int]]]]:
        """``settle_items`` split for a settle of many in one transaction
        (``reservations.settle_parts``); ``ledger_items`` makes the summed additions."""
        return settle_parts(self._table, r, actual_nanos)

    def ingest_parts(
        self, r: Reservation, actual_nanos: int, worst_nanos: int
    ) -> tuple[list[Item], list[tuple[Item, dict[str, int]]]]:
        """A part's chunk answered (``parts.ingest_parts``): its jobs' worst cases out of
        the part's reservation ``r``, their real cost into the ledgers."""
        return ingest_parts(self._table, r, actual_nanos, worst_nanos)

    def ledger_items(self, additions: Iterable[tuple[Item, Mapping[str, int]]]) -> list[Item]:
        """One write per ledger: the sum of ``additions`` to it."""
        summed: dict[tuple[str, str], tuple[Item, dict[str, int]]] = {}
        for key, deltas in additions:
            at = (key[TABLE_PK]["S"], key[TABLE_SK]["S"])
            total = summed.setdefault(at, (key, {}))[1]
            for name, delta in deltas.items():
                total[name] = total.get(name, 0) + delta
        return [add_item(self._table, key, deltas) for key, deltas in summed.values()]

    def settle(self, r: Reservation, actual_nanos: int) -> bool:
        """Settle on its own; False if it was already settled (or released)."""
        done = not self._transact(self.settle_items(r, actual_nanos))
        if done:
            self.settled(r, actual_nanos)
        return done

    def settled(self, r: Reservation, actual_nanos: int) -> None:
        """After a settle committed (here or in the caller's transaction): one above its
        reservation (a provider that billed past the worst case) put its shard over its
        slice, which the other shards' conditions cannot see; its excess is spread onto
        them (``rebalance``), as the unsharded ledger would count it against them all."""
        if actual_nanos > r.nanos:
            self.rebalance(r.day)

    def arm(self, r: Reservation) -> bool:
        """Mark ``r``: a call under it is about to be sent (``reservations.arm_item``; one
        plain conditional write, no transaction), its answer to be stored in the objects
        of ``r.flush``. False if it is no longer this copy's reservation (reclaimed, taken
        over) or another delivery armed it first (its call is that delivery's). One armed
        as it was made (``reserve_many``) is this delivery's already: nothing to write."""
        if r.armed_unsent:
            r.armed_unsent = False
            return True
        now, token = self._clock(), uuid.uuid4().hex
        if not self._update(arm_item(self._table, r, now, token)):
            return False
        r.armed, r.armed_at, r.arm_token = True, round(now, 3), token
        return True

    def call_over(self, r: Reservation) -> bool:
        """The call ``r`` was armed for is over and its delivery ends without settling (it
        raised): ``armed_at`` goes back to 0 (``reservations.call_over_item``), so another
        delivery of the copy does not wait ``worker.timeout_s`` for it, and finishes from
        the stored answer or books the call at once. False if it is no longer that arm's."""
        if not r.armed or r.armed_unsent or r.arm_token is None:
            return False
        return self._update(call_over_item(self._table, r))

    def _update(self, item: Item) -> bool:
        """One conditional ``UpdateItem``; False when its condition failed."""
        try:
            self._ddb.update_item(**item["Update"])
        except ClientError as err:
            if error_code(err) != "ConditionalCheckFailedException":
                raise
            return False
        return True

    def disarm(self, r: Reservation) -> bool:
        """Unarm a reservation armed as it was made whose call never went out
        (``reservations.disarm_item``), for a job that leaves keeping it. False if nothing
        was to be done or it is no longer that arm's (settled, released, armed again)."""
        if not r.armed_unsent or not self._update(disarm_item(self._table, r)):
            return False
        r.armed, r.armed_at, r.armed_unsent, r.flush = False, None, False, None
        return True

    def release(
        self,
        r: Reservation,
        *,
        expired_before: float | None = None,
        spent_nanos: int = 0,
        extra: Sequence[Item] = (),
    ) -> bool:
        """Give a reservation back. False if it was not held (nothing was written).

        With ``expired_before``, only if its deadline is before that time (reclaim).
        ``spent_nanos`` is booked as spent: what a call under it may have been billed
        whose answer was never read; ``extra`` items (the batch's counters of that
        booking) commit with it or not at all.
        """
        items = release_items(self._table, r, expired_before, spent_nanos)
        return not self._transact([*items, *extra])

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
        return sum(
            self._reclaim_marker(d, m, now)
            for d in days
            for shard in range(self.shards(d, create=False))
            for m in self._expired(d, shard, now)
        )

    def _reclaim_marker(self, day: str, marker: Mapping[str, Any], now: float) -> int:
        """Reclaim what an expired marker covers: its own reservation, or the expired ones
        of a group; a group's marker then says the next deadline among those still open,
        or goes when none is (after the releases: a release that fails leaves it)."""
        if "jobs" not in marker:
            return int(self._reclaim(_own_reservation(day, marker), now))
        group, jobs = marker[TABLE_SK]["S"], [j["S"] for j in marker["jobs"]["L"]]
        at = MarkerAt(day, group, shards_of(marker).get("shard", 0))
        expired = [r for r, deadline in self.open_in_group(group, jobs) if deadline < now]
        reclaimed = sum(self._reclaim(r, now) for r in expired)
        if still := self.open_in_group(group, jobs):
            self._ddb.update_item(
                TableName=self._table,
                Key=open_key(*at),
                UpdateExpression="SET #r = :r",
                ExpressionAttributeNames={"#r": "reclaim_at"},
                ExpressionAttributeValues={":r": n(min(deadline for _, deadline in still))},
            )
        else:
            self._ddb.delete_item(TableName=self._table, Key=open_key(*at))
        return reclaimed

    def open_in_group(self, group: str, jobs: Sequence[str]) -> list[tuple[Reservation, float]]:
        """The reservations of a group's jobs still ``reserved`` under the group's marker
        (not a later reservation of the job), with their deadlines: consistent reads."""
        found = self._read_all([reservation_key(job) for job in jobs])
        return [
            (reservation_of(item), float(item["reclaim_at"]["N"]))
            for item in found
            if item.get("state", {}).get("S") == "reserved"
            and item.get("marker", {}).get("S") == group
        ]

    def close_group_marker(self, at: MarkerAt, jobs: Sequence[str]) -> bool:
        """Delete a group's open marker if no reservation it names is still open (a job
        that raised, a copy that took one over, a throttled hand-back keep it); True if
        it is gone."""
        if self.open_in_group(at.marker, jobs):
            return False
        self._ddb.delete_item(TableName=self._table, Key=open_key(*at))
        return True

    def _reclaim(self, r: Reservation, now: float) -> bool:
        """A dead copy's reservation: given back, or booked at its worst case if the dead
        copy had sent its call (``armed``): the provider may have billed it."""
        key = reservation_key(r.job_key)
        item = self._ddb.get_item(TableName=self._table, Key=key, ConsistentRead=True).get("Item")
        armed = bool(item and item.get("armed", {}).get("BOOL"))
        if armed:
            logger.warning(
                "booked a dead call at its worst case: its worker died after sending it",
                extra={"job_key": r.job_key, "nanos": r.nanos, "day": r.day},
            )
        return self.release(r, expired_before=now, spent_nanos=r.nanos if armed else 0)

    def _expired(self, day: str, shard: int, now: float) -> Iterator[Mapping[str, Any]]:
        """The open markers of the day's partition ``shard`` whose deadline has passed."""
        kwargs: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": "#pk = :pk",
            "FilterExpression": "#r < :now",
            "ExpressionAttributeNames": {"#pk": TABLE_PK, "#r": "reclaim_at"},
            "ExpressionAttributeValues": {
                ":pk": open_key(day, "", shard)[TABLE_PK],
                ":now": n(now),
            },
        }
        while True:
            reply = self._ddb.query(**kwargs)
            yield from reply.get("Items", [])
            if "LastEvaluatedKey" not in reply:
                return
            kwargs["ExclusiveStartKey"] = reply["LastEvaluatedKey"]


def _own_reservation(day: str, marker: Mapping[str, Any]) -> Reservation:
    """The reservation a job's own open marker stands for."""
    batch = marker.get("batch_id", {}).get("S")
    return Reservation(
        job_key=marker[TABLE_SK]["S"],
        day=day,
        nanos=int_of(marker, "nanos"),
        batch_id=batch,
        batch_limit=batch is not None,
        rid=marker.get("rid", {}).get("S", "legacy"),
        **shards_of(marker),
    )


def _fitting(asks: Sequence[Ask]) -> Sequence[Ask]:
    """The longest prefix of ``asks`` whose reservations make one transaction: one item
    per job, the group's marker, one shard of the day's ledger and one of each limited
    batch's ledger."""
    limited: set[str] = set()
    for count, a in enumerate(asks):
        if a.batch_id is not None and a.batch_limit_nanos is not None:
            limited.add(a.batch_id)
        if count + 1 + 2 + len(limited) > MAX_TRANSACT_ITEMS:
            return asks[:count]
    return asks
