"""A DynamoDB write limit per item for the local runtime, refused the way DynamoDB refuses.

A deployed table takes about 1,000 write units per second on one partition; past that,
DynamoDB throttles the writes to the hot item. moto never does, so a local run cannot show
what the pipeline does when the day's ledger or a batch's counters are throttled. With
``throttling(wcu_s)`` active, every item of every table may take ``wcu_s`` write units in
any rolling second; a write that would take an item past it is refused, unapplied:

- ``PutItem``, ``UpdateItem``, ``DeleteItem``: ``ProvisionedThroughputExceededException``
  (HTTP 400, with ``ThrottlingReasons`` ``TableWriteKeyRangeThroughputExceeded``, as an
  on-demand table answers for a hot key); botocore retries it itself;
- ``TransactWriteItems``: ``TransactionCanceledException`` whose ``CancellationReasons``
  hold ``ThrottlingError`` for each hot item and ``None`` for the others; nothing written
  (``chatbatch.state.ddb.transact`` tries it again).

Units follow DynamoDB's rules (``chatbatch.state.item_size``): a write costs 1 unit per
started KB of the larger of the item before and after, doubled in a transaction. A write
that reached the item (applied, or refused by its condition, which DynamoDB bills too) is
counted; a throttled one is not. A write is refused if the item's units of the last
second and its own would pass the limit, unless the item took none in that second (a
write larger than the limit would otherwise never pass). ``BatchWriteItem``, which the
pipeline does not use, is not limited.

The hooks wrap moto's DynamoDB backend (written for the moto of ``moto_fixes``, checked by
``check_moto``); they are put in the first time throttling is turned on, and do nothing
(one check) while it is off. ``throttling`` turns it off again when its block ends, so the
other tests of a process see moto as it was.
"""

from __future__ import annotations

import contextvars
import functools
import json
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from moto.dynamodb.exceptions import DynamodbException, TransactionCanceledException
from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodb.models.dynamo_type import DynamoType
from moto.dynamodb.models.table import Table
from moto.dynamodb.responses import DynamoHandler

from chatbatch.local import moto_fixes
from chatbatch.local.moto_fixes import LOCK
from chatbatch.state.item_size import item_size, write_units

WINDOW_S = 1.0
# DynamoDB's words for a hot key on an on-demand table (TransactWriteItems' documented
# ThrottlingError message; the same text for a plain write's exception)
HOT_KEY_MESSAGE = (
    "Throughput exceeds the current capacity of your table or index. DynamoDB is "
    "automatically scaling your table or index so please try again shortly. If exceptions "
    "persist, check if you have a hot key: "
    "https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/bp-partition-key-design.html."
)
THROTTLING_REASON = "TableWriteKeyRangeThroughputExceeded"

ItemId = tuple[str, str, str]  # (table, partition key, sort key) as strings


class ProvisionedThroughputExceeded(DynamodbException):
    """A plain write's refusal, as DynamoDB sends it (HTTP 400)."""

    error_type = "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException"

    def __init__(self, table: Table) -> None:
        super().__init__(self.error_type, HOT_KEY_MESSAGE)
        reasons = [{"reason": THROTTLING_REASON, "resource": table.table_arn}]
        self.description = json.dumps(
            {"__type": self.error_type, "message": HOT_KEY_MESSAGE, "ThrottlingReasons": reasons}
        )


@dataclass
class ItemThrottle:
    """Each item's write units over the last ``WINDOW_S`` and the limit on them."""

    wcu_s: float
    clock: Callable[[], float] = time.monotonic
    throttled: int = 0  # requests refused (a transaction counts once)
    refused_items: Counter[ItemId] = field(default_factory=Counter)  # each hot item's refusals
    _windows: dict[ItemId, deque[tuple[float, int]]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def used(self, item: ItemId, now: float | None = None) -> int:
        """The item's write units within the window ending ``now``."""
        window = self._windows.get(item)
        if not window:
            return 0
        now = self.clock() if now is None else now
        while window and window[0][0] <= now - WINDOW_S:
            window.popleft()
        return sum(u for _, u in window)

    def over(self, item: ItemId, cost: int, now: float) -> bool:
        """Would ``cost`` more units take the item past its limit?"""
        used = self.used(item, now)
        return used > 0 and used + cost > self.wcu_s

    def spend(self, item: ItemId, cost: int, now: float) -> None:
        self._windows.setdefault(item, deque()).append((now, cost))

    def refused(self, items: list[ItemId]) -> None:
        with self._lock:
            self.throttled += 1
            self.refused_items.update(items)


# the throttles turned on, the latest one in force (a stack: blocks may nest)
_ACTIVE: list[ItemThrottle] = []


def active() -> ItemThrottle | None:
    """The throttle in force, if any."""
    return _ACTIVE[-1] if _ACTIVE else None


# set while a transaction's own puts/updates/deletes (or a BatchWriteItem's) run: those
# were limited (or not) as the request they belong to
_nested: contextvars.ContextVar[bool] = contextvars.ContextVar("throttle_nested", default=False)


@contextmanager
def throttling(wcu_s: float, clock: Callable[[], float] = time.monotonic) -> Iterator[ItemThrottle]:
    """Every item limited to ``wcu_s`` write units a second until the block ends."""
    if wcu_s <= 0:
        raise ValueError(f"a write limit must be positive, not {wcu_s}")
    install()
    throttle = ItemThrottle(wcu_s, clock)
    with LOCK:
        _ACTIVE.append(throttle)
    try:
        yield throttle
    finally:
        with LOCK:
            _ACTIVE.remove(throttle)


# --- sizes ---------------------------------------------------------------------------


def _item_id(table: Table, key: dict[str, Any]) -> tuple[ItemId, DynamoType, DynamoType | None]:
    hash_value = DynamoType(key[table.hash_key_attr])
    range_attr = table.range_key_attr
    range_value = DynamoType(key[range_attr]) if range_attr and range_attr in key else None
    ident = (
        table.name,
        str(hash_value.value),
        "" if range_value is None else str(range_value.value),
    )
    return ident, hash_value, range_value


def _stored_size(table: Table, hash_value: DynamoType, range_value: DynamoType | None) -> int:
    try:
        current = table.get_item(hash_value, range_value)
    except Exception:  # a key moto refuses: its own error comes with the write
        return 0
    return item_size(current.to_json()["Attributes"]) if current is not None else 0


@dataclass
class _Target:
    """One item a write touches: where it is, its size before, the units it may cost."""

    table: Table
    ident: ItemId
    hash_value: DynamoType
    range_value: DynamoType | None
    before: int
    transactional: bool
    put_size: int = 0  # a Put's new item: the size it will have

    @property
    def estimate(self) -> int:
        return write_units(self.before, self.put_size, transactional=self.transactional)

    def spent(self) -> int:
        after = _stored_size(self.table, self.hash_value, self.range_value)
        return write_units(self.before, after, transactional=self.transactional)


def _target(
    backend: DynamoDBBackend,
    table_name: str,
    key: dict[str, Any],
    *,
    transactional: bool,
    put: bool,
) -> _Target | None:
    table = backend.tables.get(table_name)
    if table is None or table.hash_key_attr not in key:
        return None  # moto answers it with its own error
    ident, hash_value, range_value = _item_id(table, key)
    before = _stored_size(table, hash_value, range_value)
    put_size = item_size(key) if put else 0
    return _Target(table, ident, hash_value, range_value, before, transactional, put_size)


# --- the hooks -----------------------------------------------------------------------


def _limited(
    throttle: ItemThrottle, targets: list[_Target], refuse: Callable[[list[bool]], Exception]
) -> Callable[[Callable[[], Any]], Any]:
    """Run a write unless one of its items is over the limit; count what it spent."""

    def run(write: Callable[[], Any]) -> Any:
        now = throttle.clock()
        hot = [throttle.over(t.ident, t.estimate, now) for t in targets]
        if any(hot):
            throttle.refused([t.ident for t, h in zip(targets, hot, strict=True) if h])
            raise refuse(hot)
        token = _nested.set(True)
        try:
            return write()
        finally:
            _nested.reset(token)
            for t in targets:  # applied, or refused by a condition: both billed
                throttle.spend(t.ident, t.spent(), now)

    return run


def _plain(
    method: Callable[..., Any],
    key_of: Callable[[DynamoDBBackend, str, Any], dict[str, Any]],
    put: bool,
) -> Callable[..., Any]:
    @functools.wraps(method)
    def throttled(self: DynamoDBBackend, table_name: str, keyed: Any, *args: Any, **kw: Any) -> Any:
        throttle = active()
        if throttle is None or _nested.get():
            return method(self, table_name, keyed, *args, **kw)
        with LOCK:
            target = _target(
                self, table_name, key_of(self, table_name, keyed), transactional=False, put=put
            )
            if target is None:
                return method(self, table_name, keyed, *args, **kw)
            refuse = lambda _hot: ProvisionedThroughputExceeded(target.table)  # noqa: E731
            return _limited(throttle, [target], refuse)(
                lambda: method(self, table_name, keyed, *args, **kw)
            )

    return throttled


def _transaction_targets(
    backend: DynamoDBBackend, transact_items: list[dict[str, Any]]
) -> list[_Target] | None:
    targets: list[_Target] = []
    for entry in transact_items:
        op_type, op = next(iter(entry.items()))
        table = backend.tables.get(op.get("TableName", ""))
        key = op.get("Item") if op_type == "Put" else op.get("Key")
        if table is None or not key:
            return None  # moto refuses the transaction itself
        target = _target(backend, table.name, key, transactional=True, put=op_type == "Put")
        if target is None:
            return None
        targets.append(target)
    return targets


def _cancelled(hot: list[bool]) -> TransactionCanceledException:
    return TransactionCanceledException(
        [("ThrottlingError", HOT_KEY_MESSAGE, None) if h else (None, None, None) for h in hot]
    )


@functools.cache
def install() -> None:
    """Wrap moto's DynamoDB writes (once, after ``moto_fixes``): each asks the active
    throttle, if any."""
    moto_fixes.apply()

    def whole_item(backend: DynamoDBBackend, table_name: str, attrs: Any) -> dict[str, Any]:
        return dict(attrs)

    def key_only(backend: DynamoDBBackend, table_name: str, key: Any) -> dict[str, Any]:
        return dict(key)

    DynamoDBBackend.put_item = _plain(DynamoDBBackend.put_item, whole_item, put=True)  # type: ignore[method-assign]
    DynamoDBBackend.update_item = _plain(DynamoDBBackend.update_item, key_only, put=False)  # type: ignore[method-assign]
    DynamoDBBackend.delete_item = _plain(DynamoDBBackend.delete_item, key_only, put=False)  # type: ignore[method-assign]

    transact = DynamoDBBackend.transact_write_items

    def throttled_transact(self: DynamoDBBackend, transact_items: list[dict[str, Any]]) -> None:
        throttle = active()
        if throttle is None:
            return transact(self, transact_items)
        with LOCK:
            targets = _transaction_targets(self, transact_items)
            if targets is None:
                return transact(self, transact_items)
            return _limited(throttle, targets, _cancelled)(lambda: transact(self, transact_items))  # type: ignore[no-any-return]

    DynamoDBBackend.transact_write_items = throttled_transact  # type: ignore[method-assign]

    batch_write = DynamoHandler.batch_write_item

    def unlimited_batch_write(self: DynamoHandler) -> Any:
        token = _nested.set(True)
        try:
            return batch_write(self)
        finally:
            _nested.reset(token)

    DynamoHandler.batch_write_item = unlimited_batch_write  # type: ignore[method-assign]
