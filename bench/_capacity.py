"""DynamoDB capacity units of a local run, write by write: every item a write hit, when,
its size and its write units, and the read units by purpose. ``bench_overhead`` sums them
into the bill per job; ``bench_hot_items`` finds the hottest item of each kind.

Requests are seen by botocore's event hooks on the default session (``after-call`` fires
for refused writes too, which DynamoDB bills as well). The size of what a write left comes
from moto's side (``chatbatch.local.journal.tap``: the after-image of every item it
touched); with moto in-process that runs in the caller's thread, before ``after-call``, so
the two are joined through a thread-local. Units follow DynamoDB's rules
(``chatbatch.state.item_size``, shared with the local throttle): an item's size is
its attribute names plus its values; a write costs 1 WRU per started KB of the larger of
the item before and after it (at least 1), twice that in a transaction; a strongly
consistent read 1 RRU per started 4 KB (0.5 eventually consistent).
"""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from chatbatch.core.resources import TABLE_PK, TABLE_SK
from chatbatch.local import sessions
from chatbatch.local.journal import tap
from chatbatch.local.journal.images import Change
from chatbatch.state.item_size import READ_UNIT_BYTES, item_size, units, write_units

PLAIN_WRITES = frozenset({"PutItem", "UpdateItem", "DeleteItem"})
# The actions of a TransactWriteItems (a ConditionCheck is billed like a write of the item).
TRANSACT_ACTIONS = ("Put", "Update", "Delete", "ConditionCheck")
TXN_LABEL = "transactions (their WRU by item kind: txn:*)"

ItemKey = tuple[str, str]  # (pk, sk)


# --- items -------------------------------------------------------------------------


def item_key(key: dict[str, Any] | None) -> ItemKey:
    key = key or {}
    return str(key.get(TABLE_PK, {}).get("S", "?")), str(key.get(TABLE_SK, {}).get("S", ""))


def purpose(pk: str) -> str:
    """The first part of a partition key: ``budget``, ``job``, ``batch``, ``limiter`` ..."""
    return pk.split("#", 1)[0] or "?"


# --- the writes ---------------------------------------------------------------------


@dataclass(frozen=True)
class Write:
    """One item written by one request (a transaction writes several)."""

    at: float  # time.monotonic() when the answer came
    pk: str
    sk: str
    action: str  # PutItem/UpdateItem/DeleteItem, or Put/Update/Delete/ConditionCheck in a txn
    size: int  # bytes billed: the larger of the item before and after
    ok: bool  # False: the request was refused (a condition, a cancelled transaction)

    @property
    def key(self) -> ItemKey:
        return self.pk, self.sk

    @property
    def transactional(self) -> bool:
        return self.action in TRANSACT_ACTIONS

    @property
    def wru(self) -> int:
        return write_units(self.size, 0, transactional=self.transactional)


class _Images(tap.Listener):
    """The after-images of the last write this thread made (moto tells them in the caller's
    thread, under its lock, before the answer)."""

    def __init__(self) -> None:
        self.local = threading.local()

    def ddb(self, changes: list[Change]) -> None:
        self.local.changes = changes

    def take(self) -> dict[ItemKey, int]:
        """Item -> its size after the write (0: deleted); forgets them."""
        changes: list[Change] = getattr(self.local, "changes", [])
        self.local.changes = []
        return {item_key(key): item_size(item) for _table, key, item in changes}


@dataclass
class CapacityMeter:
    """Every DynamoDB write while active (``log``), and read units by purpose.

    ``install`` after the runtime started (it sets up the default session the pipeline's
    clients come from); ``start``/``stop`` around what is measured.
    """

    active: bool = False
    log: list[Write] = field(default_factory=list)
    rru: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    writes: Counter[str] = field(default_factory=Counter)  # requests; transactions as one
    _sizes: dict[ItemKey, int] = field(default_factory=dict)  # every item's last known size
    _images: _Images = field(default_factory=_Images)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def install(self) -> None:
        tap.attach(self._images)
        sessions.register("before-parameter-build.dynamodb", self._before)
        sessions.register("after-call.dynamodb", self._after)

    def uninstall(self) -> None:
        tap.detach(self._images)

    def _before(self, params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        context["bench_params"] = params
        self._images.take()  # nothing left over from a request that never answered

    def _after(
        self, model: Any, parsed: dict[str, Any], context: dict[str, Any], **kw: Any
    ) -> None:
        params = context.get("bench_params") or {}
        after = self._images.take()
        status = kw.get("http_response")
        ok = status is None or getattr(status, "status_code", 200) < 300
        with self._lock:
            self._count(model.name, params, parsed, after, ok)

    def _written(
        self, action: str, params: dict[str, Any], after: dict[ItemKey, int], ok: bool
    ) -> Write:
        """One item's write: its size is the larger of before and after (what DynamoDB bills)."""
        key = item_key(params.get("Key") or params.get("Item"))
        before = self._sizes.get(key, 0)
        if key in after:
            now_size = after[key]
        elif ok and "Item" in params:  # a write moto did not report (another process)
            now_size = item_size(params["Item"])
        else:
            now_size = before
        if ok:
            self._sizes[key] = now_size
        return Write(time.monotonic(), *key, action, max(before, now_size), ok)

    def _count(
        self,
        op: str,
        params: dict[str, Any],
        parsed: dict[str, Any],
        after: dict[ItemKey, int],
        ok: bool,
    ) -> None:
        written: list[Write] = []
        if op in PLAIN_WRITES:
            written.append(self._written(op, params, after, ok))
        elif op == "TransactWriteItems":
            for entry in params.get("TransactItems", []):
                ((action, body),) = entry.items()
                written.append(self._written(action, body, after, ok))
        elif op == "BatchWriteItem":
            for requests in params.get("RequestItems", {}).values():
                for request in requests:
                    put = request.get("PutRequest")
                    body = put or {"Key": request["DeleteRequest"]["Key"]}
                    action = "PutItem" if put else "DeleteItem"
                    written.append(self._written(action, body, after, ok))
        elif self.active:
            self._read(op, params, parsed)
        if not self.active or not written:
            return
        self.log.extend(written)
        label = TXN_LABEL if op == "TransactWriteItems" else purpose(written[0].pk)
        self.writes[label] += 1

    def _read(self, op: str, params: dict[str, Any], parsed: dict[str, Any]) -> None:
        if op == "GetItem":
            size = item_size(parsed.get("Item"))
            rru = units(size, READ_UNIT_BYTES) if params.get("ConsistentRead") else 0.5
            self.rru[purpose(item_key(params.get("Key"))[0])] += rru
        elif op == "BatchGetItem":
            for table_items in parsed.get("Responses", {}).values():
                for item in table_items:
                    self.rru[f"batch:{purpose(item_key(item)[0])}"] += units(
                        item_size(item), READ_UNIT_BYTES
                    )
            asked = sum(len(t["Keys"]) for t in params.get("RequestItems", {}).values())
            found = sum(len(t) for t in parsed.get("Responses", {}).values())
            self.rru["batch:missing"] += max(0, asked - found)
        elif op in {"Query", "Scan"}:
            size = sum(item_size(i) for i in parsed.get("Items", []))
            self.rru[op.lower()] += units(size, READ_UNIT_BYTES)

    @property
    def wru(self) -> Counter[str]:
        """Write units by purpose; a transaction's under ``txn:<purpose>``."""
        out: Counter[str] = Counter()
        with self._lock:
            for w in self.log:
                out[f"txn:{purpose(w.pk)}" if w.transactional else purpose(w.pk)] += w.wru
        return out

    def start(self) -> None:
        with self._lock:
            self.log.clear()
            self.rru.clear()
            self.writes.clear()
            self.active = True

    def stop(self) -> None:
        self.active = False


@contextmanager
def metered() -> Iterator[CapacityMeter]:
    """A meter installed on the running runtime's default session, taken off at the end."""
    meter = CapacityMeter()
    meter.install()
    try:
        yield meter
    finally:
        meter.stop()
        meter.uninstall()
