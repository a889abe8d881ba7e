"""A job's claim on the budget: the ``Ask`` it makes, the ``Reservation`` it holds, and the
transaction items that hold, extend, settle and release one.

These build items and write nothing; ``Budget`` commits them. Settle and release each
turn the reservation's state on a condition, so either happens once or not at all (the
package docstring: **Exactly once**).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any, NamedTuple

from pydantic import BaseModel, Field

from chatbatch.core.resources import TABLE_PK, TABLE_TTL
from chatbatch.state.budget.ledger import (
    LEDGER_TTL_S,
    RESERVATION_PREFIX,
    Item,
    add_item,
    batch_ledger_key,
    day_key,
    open_key,
    reservation_key,
)
from chatbatch.state.ddb import n, s


class Ask(NamedTuple):
    """A job's request for budget: its key, worst case and batch (with the batch's limit)."""

    job_key: str
    nanos: int
    batch_id: str | None = None
    batch_limit_nanos: int | None = None
    owner: str | None = None
    batch_shards: int = 1  # the batch ledger's shards (what the batch was registered with)

    def held(self, day: str, shard: int = 0, batch_shard: int = 0) -> Reservation:
        """The reservation this ask makes on ``day``, charged to those ledger shards."""
        return Reservation(
            job_key=self.job_key,
            day=day,
            nanos=self.nanos,
            batch_id=self.batch_id,
            batch_limit=self.batch_limit_nanos is not None,
            owner=self.owner,
            shard=shard,
            batch_shard=batch_shard,
        )


class MarkerAt(NamedTuple):
    """Where a group's open marker is: its day, its id and its partition's shard."""

    day: str
    marker: str
    shard: int = 0


class Reservation(BaseModel):
    job_key: str
    day: str  # the UTC day it was made: that day's ledger holds its money until it settles
    nanos: int
    batch_id: str | None = None
    batch_limit: bool = False  # whether the batch ledger carries it too
    owner: str | None = None  # the copy of the job (its first SQS message) that holds it
    resumed: bool = False  # it existed before this call: the job may have been called already
    rid: str = Field(default_factory=lambda: uuid.uuid4().hex[:16])  # this reservation's id
    armed: bool = False  # a call under it may have reached the provider (``arm_item``)
    armed_at: float | None = None  # when: the worker that armed it may live until + timeout
    arm_token: str | None = None  # the arm's own token (``disarm_item`` matches it)
    # armed as it was made (``reserve_many``) and its call not sent yet: this delivery's
    # ``Budget.arm`` writes nothing, and ``Budget.disarm`` takes the mark off if the job
    # leaves unsent keeping it (not stored: what the item says is ``armed``)
    armed_unsent: bool = Field(default=False, exclude=True)
    # the open marker of the group it was reserved in (``reserve_many``), or None: its own
    marker: str | None = None
    # the flush id of the invocation that armed it last: its objects may hold the answer
    # (``worker/finals.py``; ``results.recover`` looks there after a crash)
    flush: str | None = None
    # the shard of the day's ledger that holds its money (its open marker is in that
    # shard's partition), and of its batch's ledger: 0 when they are not sharded
    shard: int = 0
    batch_shard: int = 0

    def marker_at(self) -> MarkerAt:
        assert self.marker is not None
        return MarkerAt(self.day, self.marker, self.shard)


def reservation_of(item: Mapping[str, Any]) -> Reservation:
    """The reservation a stored reservation item holds (its holder as ``owner``)."""
    batch = item.get("batch_id", {}).get("S")
    return Reservation(
        job_key=item[TABLE_PK]["S"].removeprefix(RESERVATION_PREFIX),
        day=item["day"]["S"],
        nanos=int(item["nanos"]["N"]),
        batch_id=batch,
        batch_limit=batch is not None,
        owner=item.get("owner", {}).get("S"),
        rid=item.get("rid", {}).get("S", "legacy"),
        armed=item.get("armed", {}).get("BOOL", False),
        armed_at=float(item["armed_at"]["N"]) if "armed_at" in item else None,
        arm_token=item.get("arm_token", {}).get("S"),
        marker=item.get("marker", {}).get("S"),
        flush=item.get("flush", {}).get("S"),
        **shards_of(item),
    )


def shards_of(item: Mapping[str, Any]) -> dict[str, int]:
    """The ledger shards a stored reservation or marker names (absent: 0)."""
    return {name: int(item[name]["N"]) for name in ("shard", "batch_shard") if name in item}


def _shard_fields(r: Reservation) -> Item:
    return {name: n(v) for name, v in (("shard", r.shard), ("batch_shard", r.batch_shard)) if v}


# the reservation the caller holds, not a later one of the same job (items made before
# reservations had ids match any)
SAME_RID = "(#rid = :rid OR attribute_not_exists(#rid))"


def hold_items(table: str, r: Reservation, now: float, ttl_s: int) -> list[Item]:
    """The reservation item (only if the job holds none yet) and its own open marker; a
    reservation of a group names the group's marker instead (``group_marker_item``)."""
    reclaim_at = round(now + ttl_s, 3)
    fields: Item = {"nanos": n(r.nanos), "reclaim_at": n(reclaim_at), "rid": s(r.rid)}
    if r.batch_limit and r.batch_id:
        fields["batch_id"] = s(r.batch_id)
    if r.owner:
        fields["owner"] = s(r.owner)
    fields |= _shard_fields(r)
    expires = {TABLE_TTL: n(int(now) + LEDGER_TTL_S)}
    armed: Item = {}
    if r.armed:  # armed as it is made (``reserve_many``): its arm is this write
        assert r.arm_token is not None and r.armed_at is not None
        armed = {"armed": {"BOOL": True}, "armed_at": n(r.armed_at), "arm_token": s(r.arm_token)}
        armed |= {"flush": s(r.flush)} if r.flush is not None else {}
    reservation: Item = {
        "Put": {
            "TableName": table,
            "Item": {
                **reservation_key(r.job_key),
                **fields,
                **expires,
                "day": s(r.day),
                "state": s("reserved"),
                **({"marker": s(r.marker)} if r.marker else {}),
                **armed,
            },
            "ConditionExpression": "attribute_not_exists(#pk)",
            "ExpressionAttributeNames": {"#pk": TABLE_PK},
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        }
    }
    if r.marker:
        return [reservation]
    marker = open_key(r.day, r.job_key, r.shard)
    own = {"Put": {"TableName": table, "Item": {**marker, **fields, **expires}}}
    return [reservation, own]


def group_marker_item(table: str, held: list[Reservation], now: float, ttl_s: int) -> Item:
    """One open marker for reservations made together (``reserve_many``): the keys of their
    jobs, and when the first of them may be reclaimed. One write for the group where each
    job's own marker would be one each (and one more each to close it); ``reclaim`` reads
    the reservations it names."""
    first = held[0]
    assert first.marker is not None and all(r.marker == first.marker for r in held)
    return {
        "Put": {
            "TableName": table,
            "Item": {
                **open_key(first.day, first.marker, first.shard),
                "jobs": {"L": [s(r.job_key) for r in held]},
                **_shard_fields(first),
                "reclaim_at": n(round(now + ttl_s, 3)),
                TABLE_TTL: n(int(now) + LEDGER_TTL_S),
            },
        }
    }


def close_marker_item(table: str, at: MarkerAt) -> Item:
    """Delete a group's open marker (every reservation it names is closed)."""
    return {"Delete": {"TableName": table, "Key": open_key(*at)}}


def extend_items(
    table: str, r: Reservation, holder: str | None, now: float, ttl_s: int
) -> list[Item]:
    """A redelivered job keeps its reservation: not reclaimable for another TTL. The
    owner changes only from the ``holder`` seen (a copy taking over an expired claim).
    Its own marker says so too; a group's marker is left as it is (``reclaim`` reads
    the deadline of each reservation it names)."""
    reclaim_at = n(round(now + ttl_s, 3))
    names = {"#r": "reclaim_at", "#s": "state", "#o": "owner"}
    values: Item = {":r": reclaim_at, ":reserved": s("reserved")}
    update, owned = "SET #r = :r", "attribute_not_exists(#o)"
    if r.owner:
        update, values[":o"] = update + ", #o = :o", s(r.owner)
    if holder:
        owned, values[":holder"] = "#o = :holder", s(holder)
    extended: Item = {
        "Update": {
            "TableName": table,
            "Key": reservation_key(r.job_key),
            "UpdateExpression": update,
            "ConditionExpression": f"#s = :reserved AND {owned}",
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": values,
        }
    }
    if r.marker:
        return [extended]
    return [
        extended,
        {
            "Update": {
                "TableName": table,
                "Key": open_key(r.day, r.job_key, r.shard),
                "UpdateExpression": "SET #r = :r",
                "ConditionExpression": "attribute_exists(#r)",
                "ExpressionAttributeNames": {"#r": "reclaim_at"},
                "ExpressionAttributeValues": {":r": reclaim_at},
            }
        },
    ]


def arm_item(table: str, r: Reservation, now: float, token: str) -> Item:
    """Mark the reservation: a call under it is about to be sent. From here on, a copy of
    the job that finds it (a redelivery after a crash, a takeover) or a reclaim books it
    as billed at its worst case unless the answer was stored. It records ``r.flush``, the
    flush id whose objects will hold the answer (where a redelivery looks for it).

    Once: a reservation carries one call (another is bought under a new one), so only
    the first arm passes, and the same request sent again (``token``: a retry of a write
    that landed). Two deliveries of one message that both got the reservation back before
    either armed it (the first outlived its visibility timeout) cannot both call."""
    names = {
        "#s": "state",
        "#d": "day",
        "#rid": "rid",
        "#a": "armed",
        "#t": "armed_at",
        "#k": "arm_token",
    }
    values: Item = {
        ":reserved": s("reserved"),
        ":day": s(r.day),
        ":rid": s(r.rid),
        ":true": {"BOOL": True},
        ":t": n(round(now, 3)),
        ":k": s(token),
    }
    update = "SET #a = :true, #t = :t, #k = :k"
    if r.flush is not None:
        names["#f"], values[":f"] = "flush", s(r.flush)
        update += ", #f = :f"
    condition = (
        f"#s = :reserved AND #d = :day AND {SAME_RID} AND (attribute_not_exists(#a) OR #k = :k)"
    )
    if r.owner:
        names["#o"], values[":o"] = "owner", s(r.owner)
        condition += " AND #o = :o"
    return {
        "Update": {
            "TableName": table,
            "Key": reservation_key(r.job_key),
            "UpdateExpression": update,
            "ConditionExpression": condition,
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": values,
        }
    }


def disarm_item(table: str, r: Reservation) -> Item:
    """Take the mark off a reservation armed as it was made (``reserve_many``) whose call
    never went out: the job leaves keeping it (handed back, or raised), and its next
    delivery gets it back unarmed instead of booking a call that was never sent (and
    without a ``flush``: no answer to look for). Only while it is still that arm's
    (``arm_token``) and still reserved."""
    names = {"#a": "armed", "#t": "armed_at", "#k": "arm_token", "#f": "flush"}
    return _on_its_arm(table, r, "REMOVE #a, #t, #k, #f", names, {})


def call_over_item(table: str, r: Reservation) -> Item:
    """The call ``r`` was armed for is over (its delivery raised after it): ``armed_at`` 0,
    so no delivery waits for the worker that sent it; it stays armed (the call may have
    been billed: booked unless its answer is found). Only while it is still that arm's."""
    return _on_its_arm(table, r, "SET #t = :zero", {"#t": "armed_at"}, {":zero": n(0)})


def _on_its_arm(
    table: str, r: Reservation, update: str, names: dict[str, str], values: Item
) -> Item:
    """An update of ``r``'s item while it is still reserved, the same reservation and
    armed by the arm ``r`` holds the token of."""
    assert r.arm_token is not None
    return {
        "Update": {
            "TableName": table,
            "Key": reservation_key(r.job_key),
            "UpdateExpression": update,
            "ConditionExpression": f"#s = :reserved AND {SAME_RID} AND #k = :k",
            "ExpressionAttributeNames": names | {"#s": "state", "#rid": "rid", "#k": "arm_token"},
            "ExpressionAttributeValues": values
            | {":reserved": s("reserved"), ":rid": s(r.rid), ":k": s(r.arm_token)},
        }
    }


def ledgers_of(r: Reservation) -> list[Item]:
    """The keys of the ledger shards ``r`` holds money in: the day's, its batch's if limited."""
    keys = [day_key(r.day, r.shard)]
    if r.batch_limit and r.batch_id:
        keys.append(batch_ledger_key(r.batch_id, r.batch_shard))
    return keys


def _close_open(table: str, r: Reservation) -> list[Item]:
    """Its own marker's delete; none for one of a group (the group's marker is closed with
    the group: ``close_marker_item``, or by ``reclaim`` once all it names are closed)."""
    own = open_key(r.day, r.job_key, r.shard)
    return [] if r.marker else [{"Delete": {"TableName": table, "Key": own}}]


def settle_items(table: str, r: Reservation, actual_nanos: int) -> list[dict[str, Any]]:
    """TransactWriteItems that turn the reservation into the real cost, exactly once.

    The caller commits them with its own items (the job's final state); the first
    item fails its condition if the reservation was already settled or released.
    """
    own, ledgers = settle_parts(table, r, actual_nanos)
    return [*own, *(add_item(table, key, deltas) for key, deltas in ledgers)]


def settle_parts(
    table: str, r: Reservation, actual_nanos: int
) -> tuple[list[Item], list[tuple[Item, dict[str, int]]]]:
    """``settle_items`` in two parts: the reservation's own items (its conditional update,
    its marker's delete), and each ledger's key with what the settle adds to it, for a
    caller that settles several reservations in one transaction and sums the additions
    into one write per ledger."""
    settled: Item = {
        "Update": {
            "TableName": table,
            "Key": reservation_key(r.job_key),
            "UpdateExpression": "SET #s = :settled, #a = :a",
            "ConditionExpression": f"#s = :reserved AND #d = :day AND {SAME_RID}",
            "ExpressionAttributeNames": {"#s": "state", "#a": "actual", "#d": "day", "#rid": "rid"},
            "ExpressionAttributeValues": {
                ":settled": s("settled"),
                ":reserved": s("reserved"),
                ":day": s(r.day),
                ":a": n(actual_nanos),
                ":rid": s(r.rid),
            },
        }
    }
    deltas = {"committed": actual_nanos - r.nanos, "spent": actual_nanos}
    return [settled, *_close_open(table, r)], [(key, dict(deltas)) for key in ledgers_of(r)]


def release_items(
    table: str,
    r: Reservation,
    expired_before: float | None,
    spent_nanos: int = 0,
    *,
    holding: bool = False,
) -> list[Item]:
    """The items that give a reservation back; with ``expired_before``, only if its
    deadline is before that time (reclaim). ``spent_nanos`` is what a call under it may
    have been billed (an answer never read: its worst case), booked as spent. With
    ``holding``, only while it holds ``r.nanos`` (a part's, which shrinks as it is
    ingested: ``state/budget/parts.py``)."""
    condition = f"#s = :reserved AND #d = :day AND {SAME_RID}"
    names = {"#s": "state", "#d": "day", "#rid": "rid"}
    values: Item = {":reserved": s("reserved"), ":day": s(r.day), ":rid": s(r.rid)}
    if holding:
        condition += " AND #n = :nanos"
        names["#n"], values[":nanos"] = "nanos", n(r.nanos)
    if expired_before is not None:
        condition += " AND #r < :now"
        names["#r"] = "reclaim_at"
        values[":now"] = n(expired_before)
    return [
        {
            "Delete": {
                "TableName": table,
                "Key": reservation_key(r.job_key),
                "ConditionExpression": condition,
                "ExpressionAttributeNames": names,
                "ExpressionAttributeValues": values,
            }
        },
        *_close_open(table, r),
        *(add_item(table, key, _returned(r, spent_nanos)) for key in ledgers_of(r)),
    ]


def _returned(r: Reservation, spent_nanos: int) -> dict[str, int]:
    deltas = {"committed": spent_nanos - r.nanos}
    return deltas | {"spent": spent_nanos} if spent_nanos else deltas
