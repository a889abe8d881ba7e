"""One limiter shard in DynamoDB: its key, its attributes, how it is read and written.

Item ``pk=limiter#<model>#<shard>, sk=state`` (numbers; slots in base 36):

- ``r<slot>``, ``t<slot>``: requests and tokens granted in a one-second slot;
- ``q<rank><metric><10 s slot>``: a priority's usage; ``o<metric><10 s slot>``: the
  estimates of leases still open;
- ``s<rank>``, ``w<rank>``: until when a priority is starving, and the tokens it wanted;
- ``nx``: when the next request may be sent (epoch microseconds): sends are spaced;
- ``f``, ``fa``: the adaptive factor and the time of its last decrease;
- ``fb``, ``fba``: the same for the spacing alone (429s of a period shorter than a minute);
- ``lr``, ``lt``: the limits learned from the provider's headers.

``decode`` reads an item into a ``policy.State``; the ``*_update`` functions build the
conditional writes (the design note in ``chatbatch.state.limiter`` says why they are safe).
Times and the factor are written to the millisecond.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from chatbatch.core.resources import TABLE_PK, TABLE_SK, TABLE_TTL
from chatbatch.state.ddb import Update, num, s
from chatbatch.state.limiter.lease import Grant
from chatbatch.state.limiter.policy import (
    BURST_STEP,
    BURST_STEP_EVERY_S,
    HORIZON_S,
    MARK_EVERY_S,
    METRICS,
    PRIO_SLOTS,
    US,
    WINDOW_SLOTS,
    Limits,
    State,
    cslot_of,
    factor,
    slot_of,
    step_us,
)

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.type_defs import AttributeValueTypeDef

    Item = Mapping[str, AttributeValueTypeDef]
else:
    Item = Mapping[str, Any]

ITEM_TTL_S = 2 * 86_400  # an idle limiter item goes away (its state is only minutes old)
MAX_REMOVES = 40  # expired slots removed per write (the rest on later writes)
NEXT = "nx"  # when the next send may start, epoch microseconds
SPECIAL = {"f", "fa", "fb", "fba", "lr", "lt", NEXT, TABLE_PK, TABLE_SK, TABLE_TTL}


def key(model: str, shard: int) -> dict[str, AttributeValueTypeDef]:
    return {TABLE_PK: s(f"limiter#{model}#{shard}"), TABLE_SK: s("state")}


def _b36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, d = divmod(n, 36)
        out = digits[d] + out
        if not n:
            return out


def slot_attr(metric: str, slot: int) -> str:
    return f"{metric}{_b36(slot)}"


def prio_attr(rank: int, metric: str, cslot: int) -> str:
    return f"q{rank}{metric}{_b36(cslot)}"


def open_attr(metric: str, cslot: int) -> str:
    return f"o{metric}{_b36(cslot)}"


def _ms(value: float) -> float:
    return round(value, 3)


def opt_int(value: float | None) -> int | None:
    return None if value is None else int(value)


# --- read --------------------------------------------------------------------------


def _decode_attr(st: State, name: str, value: AttributeValueTypeDef) -> None:
    number = num(value)
    if number is None:
        return
    head = name[0]
    if head in METRICS:
        slot = int(name[1:], 36)
        if slot >= st.slot - WINDOW_SLOTS:
            st.window[head][slot] = int(number)
        else:
            st.expired.append(name)
    elif head == "q":
        rank, metric, cslot = int(name[1]), name[2], int(name[3:], 36)
        if cslot > st.cslot - PRIO_SLOTS:
            st.prio[rank][metric] += number * st.prio_weight(cslot)
        else:
            st.expired.append(name)
    elif head == "o":
        metric, cslot = name[1], int(name[2:], 36)
        if cslot > st.cslot - PRIO_SLOTS:
            st.outstanding[metric] += int(number)
        else:
            st.expired.append(name)
    elif head == "s":
        st.marks[int(name[1:])] = number
    elif head == "w":
        st.wants[int(name[1:])] = int(number)


def decode(item: Item, now: float, configured: dict[str, float], shards: int) -> State:
    """The shard at ``now``; ``configured`` are the model's limits, split ``shards`` ways."""
    learned = {"r": num(item.get("lr")), "t": num(item.get("lt"))}
    base = {m: min(configured[m], learned[m] or math.inf) / shards for m in METRICS}  # per shard
    f0, at = num(item.get("f")), num(item.get("fa"))
    b0, burst_at = num(item.get("fb")), num(item.get("fba"))
    burst = factor(b0, burst_at, now, BURST_STEP, BURST_STEP_EVERY_S)
    limits = Limits(base, factor(f0, at, now), at, f0 if f0 is not None else 1.0, burst, burst_at)
    st = State(now=now, slot=slot_of(now), limits=limits, learned=learned)
    st.next_send_us = opt_int(num(item.get(NEXT)))
    for name, value in item.items():
        if name not in SPECIAL:
            _decode_attr(st, name, value)
    st.prev = {m: st.window[m].get(st.slot - 1) for m in METRICS}
    return st


# --- write -------------------------------------------------------------------------


def send_times(item: Item, st: State, count: int) -> tuple[float, ...]:
    """When each of the ``count`` requests a grant booked may start (epoch seconds), from
    the item its write returned: the last ``count`` spacing steps before ``nx``."""
    if not count:
        return ()
    after = opt_int(num(item.get(NEXT)))
    assert after is not None, "a grant that books sends writes nx"
    step = step_us(st.limits)
    return tuple((after - (count - i) * step) / US for i in range(count))


def grant_update(
    st: State,
    rank: int,
    jobs: list[int],
    bounds: dict[str, int],
    *,
    horizon_s: float = HORIZON_S,
    served: bool = False,
) -> Update:
    """Book ``jobs`` in the current slot, if the slot is still within ``bounds``, and their
    sends after the shard's last booked send (``nx``), spaced, the first within ``horizon_s``.

    Booked ahead (``nx`` after now): ``ADD`` onto ``nx``, so concurrent grants stack their
    sends without a version lock, bounded so that the first starts within the horizon.
    Idle (``nx`` passed): the sends start now, a version check on the ``nx`` read.
    ``served``: every job asked for is granted; the priority's starving mark goes (it
    holds others back only while it has jobs waiting).
    """
    expr = Update()
    need = {"r": len(jobs), "t": sum(jobs)}
    if spaced := st.spaced(len(jobs)):
        _book_sends(expr, st, spaced, horizon_s)
    for m in METRICS:
        cur = slot_attr(m, st.slot)
        expr.at_most(cur, bounds[m])
        expr.not_grown(slot_attr(m, st.slot - 1), st.prev[m])
        expr.add(cur, need[m])
        expr.add(prio_attr(rank, m, st.cslot), need[m])
        expr.add(open_attr(m, st.cslot), need[m])
    expr.removes = [expr.name(a) for a in st.expired[:MAX_REMOVES]]
    if served and rank in st.marks:
        expr.removes.append(expr.name(f"s{rank}"))
    return expr


def _book_sends(expr: Update, st: State, spaced: int, horizon_s: float) -> None:
    """``spaced`` sends after ``nx``: stacked onto it while it is ahead, else from now."""
    step = step_us(st.limits)
    now_us = math.floor(st.now * US)
    if st.next_send_us is not None and st.next_send_us >= now_us:
        expr.not_grown(NEXT, math.floor((st.now + horizon_s) * US) - (spaced - 1) * step)
        expr.add(NEXT, spaced * step)
    else:
        expr.absent_or_equal(NEXT, st.next_send_us)
        expr.set(NEXT, now_us + spaced * step)


def starving_update(st: State, rank: int, want: int, until: float) -> Update:
    """Mark the priority as starving until ``until`` (unless another worker just did)."""
    expr = Update()
    expr.older_than(f"s{rank}", _ms(until - MARK_EVERY_S))
    expr.set(f"s{rank}", _ms(until))
    expr.set(f"w{rank}", want)
    return expr


def give_back_update(grant: Grant, requests: int, tokens: int, now: float) -> Update:
    """Give-backs into the grant's slots, its estimate closed (nothing to write: no adds).

    A give-back to a slot already out of the window is dropped; extra usage (a
    negative give-back) then lands in the current slot.
    """
    slot = slot_of(now)
    cslot = cslot_of(slot)
    fine = grant.slot if grant.slot >= slot - WINDOW_SLOTS else None
    coarse = cslot_of(grant.slot) if cslot_of(grant.slot) > cslot - PRIO_SLOTS else None
    estimate = {"r": len(grant.tokens), "t": sum(grant.tokens)}
    rank = grant.priority.rank
    expr = Update()
    for m, back in (("r", requests), ("t", tokens)):
        if back and (fine is not None or back < 0):
            expr.add(slot_attr(m, slot if fine is None else fine), -back)
        if back and (coarse is not None or back < 0):
            expr.add(prio_attr(rank, m, cslot if coarse is None else coarse), -back)
        if coarse is not None:
            expr.add(open_attr(m, coarse), -estimate[m])
    return expr


def decrease_update(last: float | None, new_factor: float, now: float, attr: str = "f") -> Update:
    """Set the factor ``attr`` (``f``: the limit's, ``fb``: the spacing's), if nobody
    decreased it since the decrease at ``last`` (kept in ``<attr>a``)."""
    expr = Update()
    expr.absent_or_equal(f"{attr}a", None if last is None else _ms(last))
    expr.set(attr, _ms(new_factor))
    expr.set(f"{attr}a", _ms(now))
    return expr


def learned_update(st: State, learned: tuple[int | None, int | None]) -> Update:
    """Store the limits learned from the provider's headers that changed (no sets: none)."""
    expr = Update()
    for attr, metric, value in (("lr", "r", learned[0]), ("lt", "t", learned[1])):
        if value is not None and st.learned[metric] != value:
            expr.set(attr, value)
    return expr
