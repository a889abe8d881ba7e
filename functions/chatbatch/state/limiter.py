"""Shared rate limiter on DynamoDB: requests and tokens per minute for every worker at once.

Design note
===========

**What is guaranteed.** For each model, in *any* 60-second window the requests and the
tokens granted (net of give-backs) stay within ``rpm`` and ``tpm``: the limits of the
config, lowered by what the provider tells us (``x-ratelimit-limit-*`` headers) and by
the adaptive factor after 429s. Only a reconcile that reports *more* tokens than were
estimated can push a window over (the tokens were spent; the ledger must not lie), and
estimates are worst cases, so that is rare.

**Sliding window of one-second slots, not a token bucket.** A token bucket that must
never let a 60 s window pass the limit needs ``capacity + 60 s x rate <= limit``: it
loses its capacity from the steady rate, and the capacity must hold the largest request
(a 4,096-token job against a 30,000 tpm key would cost 14 % of the limit). Instead each
shard item keeps the usage of the last 61 one-second slots (``r<slot>``, ``t<slot>``)
and a grant in slot ``s`` needs ``sum(slots s-60 .. s) + n <= limit``. Any 60 s window
lies inside 61 consecutive slots, so it never grants more than the limit; at saturation
that costs one slot in 61 (98.4 % of the limit is used). Requests are also paced at
1.2 x ``limit / 60`` per slot, so the minute is spread instead of spent in its first
second (providers quantise their limits to shorter periods); the 20 % headroom lets
give-backs be reused, and a single request always fits an empty slot. Tokens are not
paced: most of a worst-case estimate comes back at reconcile.

**Atomic without arithmetic in conditions.** DynamoDB conditions compare an attribute
with a value; they cannot add. The client reads the item, sums the *closed* slots
itself and turns the rule into a bound on the one attribute that is still moving::

    ADD r<s> :n ...  IF r<s> <= min(limit - sum(closed slots) - hold, pace) - n

Concurrent writers are serialised by DynamoDB on that attribute, so they never lose
each other's increments and need no version lock: two workers granting at once both
succeed while capacity remains, and a write fails exactly when it would overshoot.
Closed slots only shrink (give-backs), except the previous slot at a slot boundary,
which the condition pins (``r<s-1> <= value read``). A failed write returns the fresh
item (``ReturnValuesOnConditionCheckFailure=ALL_OLD``) and the grant is recomputed
without a read. Each instance caches the item its last request returned and re-reads
(strongly consistent) at most once per slot; denials inside a slot cost no request.

**Reconcile.** A give-back (unused request, estimate minus real usage) is a plain
``ADD`` of a negative number *into the slot of the grant*, so every window that counted
the estimate now counts the real usage. A give-back to a slot already out of the window
is dropped; usage above the estimate lands in the current slot. Open leases are counted
(``o<metric><10 s slot>``): a tokens denial that their give-backs could cover says "ask
again in 1 s" instead of waiting for the window to slide. While a call is in flight its
worst-case estimate occupies the window, so with estimates far above real usage the
real tokens per minute stay below ``tpm`` by the in-flight excess (the price of never
overshooting; providers that count ``max_tokens`` up front do the same).

**Leases.** ``lease(model, priority, [t1, ..., t10])`` takes capacity for as many jobs
of a batch as fit (the longest prefix) in one conditional write; the worker reconciles
or releases each job locally and ``close()`` writes the net give-back once. Ten jobs cost
two writes instead of twenty. ``acquire`` is a lease of one.

**Priorities.** Per priority the item keeps usage in 10-second slots (``q<rank>...``;
the oldest counted in proportion to its part in the last minute, so the sum estimates
the last 60 s) and a "starving" mark (``s<rank>``, ``w<rank>``: when it was last denied
and the tokens it wanted), written at most every 5 s. A priority's *floor* is
``share x limit``. A priority below its floor leaves room for the unused floors of the
*higher* starving priorities; a priority at or above its floor borrows: never while a
higher priority is starving, and leaving the unused floors of all starving priorities
(a held floor is at least the request it waits with, so a big request finds room).
Holds apply to the window and to the pace. So under contention every priority gets its
share, the surplus goes to the highest one that still wants more, and ``low`` is never
starved (its share is > 0); the highest starving priority is never held back, so there
is no deadlock. With slack nobody is denied, nothing is held and everybody runs at full
speed.

**Adaptive limit.** A 429 multiplies the shards' factor ``f`` by 0.5 (0.9 once the limit
is learned from headers and no decrease happened in the last 30 s: then a lone 429 is a
disagreement at the window's edge, not a wrong limit; at most once per 5 s, a conditional
write on the time of the last decrease); it grows back by 0.05 every
10 s, computed lazily from ``(f, fa)`` so recovery costs no write. Limits learned from
``x-ratelimit-limit-requests/-tokens`` are stored in the shards (``lr``, ``lt``) and the
effective limit is ``min(config, learned) x f``.

**Scale.** One DynamoDB partition takes 1,000 WCU/s; an update costs one WCU per KB of
the item. A full item holds ~200 small numbers (≈ 2 KB, 2 WCU), so one shard item takes
~500 writes/s. Without leases an acquisition is one write plus one give-back write
(≈ 250 acquisitions/s per item); with leases of 10 it is 0.2 writes (≈ 2,500/s per
item). 10,000 acquisitions/s therefore need 4 shards with leases (8 at half the
partition limit) or 40 without. Reads: at most one strongly consistent GetItem per
instance, shard and second. A model with ``S`` shards splits its limits ``S`` ways
(``limiter#<model>#<i>``); an instance picks a random shard per acquisition and tries a
second one before saying no. ``bench/bench_limiter.py`` counts the requests per
acquisition and prints this arithmetic.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from botocore.exceptions import ClientError
from pydantic import BaseModel, ConfigDict

from chatbatch.core.config import Config, Priority
from chatbatch.core.resources import TABLE_PK, TABLE_SK, TABLE_TTL

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_dynamodb.type_defs import AttributeValueTypeDef, UpdateItemInputTypeDef

    Item = Mapping[str, AttributeValueTypeDef]
else:
    Item = Mapping[str, Any]

SLOT_S = 1.0  # one slot of the sliding window
WINDOW_S = 60.0  # the limits are per minute
WINDOW_SLOTS = round(WINDOW_S / SLOT_S)  # closed slots in the window besides the current one
PACE = 1.2  # a slot may grant 1.2x its share of the minute's requests (to reuse give-backs)
PRIO_SLOT_S = 10.0  # per-priority usage is kept in coarser slots
PRIO_SLOTS = 7  # the current one and 6 before: 60-70 s, never less than the window
STARVING_S = 15.0  # a priority denied this recently is starving
MARK_EVERY_S = 5.0  # the starving mark is refreshed at most this often
AIMD_DECREASE = 0.5  # a 429 halves the limit ...
AIMD_DECREASE_KNOWN = 0.9  # ... or takes 10 % off when the provider told us its limit,
AIMD_ESCALATE_S = 30.0  # unless 429s keep coming: a 429 this soon after a decrease halves
AIMD_COOLDOWN_S = 5.0  # ... at most once in this long
AIMD_STEP = 0.05  # then it grows back by 5 % of the limit ...
AIMD_STEP_EVERY_S = 10.0  # ... every 10 s
AIMD_FLOOR = 0.05
MAX_ATTEMPTS = 8  # conditional-write retries before a denial
MIN_WAIT_S = 0.01
RECHECK_S = 1.0  # how soon to ask again when open leases' give-backs may free the tokens
ITEM_TTL_S = 2 * 86_400  # an idle limiter item goes away (its state is only minutes old)
MAX_REMOVES = 40  # expired slots removed per write (the rest on later writes)
METRICS = ("r", "t")  # requests, tokens


class RequestTooLargeError(ValueError):
    """A request that can never fit the limit (more tokens than a whole minute allows)."""


# --- results -----------------------------------------------------------------------


class Grant(BaseModel):
    """What one conditional write gave: capacity for the first ``granted`` jobs asked for."""

    model_config = ConfigDict(frozen=True)

    model: str
    priority: Priority
    shard: int
    slot: int  # the one-second slot the usage was booked in
    tokens: tuple[int, ...]  # estimated tokens of each granted job, in order
    asked: int  # jobs asked for
    wait_s: float  # 0 when all were granted; else wait this long before asking again
    reason: str | None = None  # why not (all): window, pace, priority, adaptive, contention


class LimiterStatus(BaseModel):
    """One model's limiter right now, all shards together (for ``status``)."""

    model: str
    shards: int
    limit_requests: float
    limit_tokens: float
    factor: float
    learned_requests: int | None
    learned_tokens: int | None
    used_requests: int
    used_tokens: int
    starving: list[Priority]


class _AttemptLike(Protocol):
    @property
    def status(self) -> int | None: ...


class _LimitsLike(Protocol):
    @property
    def limit_requests(self) -> int | None: ...

    @property
    def limit_tokens(self) -> int | None: ...


class Lease:
    """Capacity held for some jobs of a batch; give back what is not used with ``close``.

    ``reconcile(i, used)`` records job ``i``'s real usage, ``release(i)`` a job that was
    never sent (its request and tokens go back). Jobs left unreported count as used at
    their estimate. ``close`` writes the net give-back in one request (none if nothing
    changed); the lease is also a context manager. Safe to share between threads.
    """

    def __init__(self, limiter: RateLimiter, grant: Grant) -> None:
        self.grant = grant
        self._limiter = limiter
        self._used: dict[int, int] = {}
        self._released: set[int] = set()
        self._closed = False
        self._lock = threading.Lock()

    @property
    def granted(self) -> int:
        """How many jobs (the first ones asked for) may be sent."""
        return len(self.grant.tokens)

    @property
    def wait_s(self) -> float:
        return self.grant.wait_s

    def __bool__(self) -> bool:
        return self.granted > 0

    def __repr__(self) -> str:
        return f"Lease({self.grant.model}, {self.granted}/{self.grant.asked} jobs)"

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def reconcile(self, index: int, used_tokens: int) -> None:
        self._check(index)
        with self._lock:
            self._used[index] = max(0, used_tokens)
            self._released.discard(index)

    def release(self, index: int) -> None:
        self._check(index)
        with self._lock:
            self._released.add(index)
            self._used.pop(index, None)

    def give_back(self) -> tuple[int, int]:
        """(requests, tokens) that ``close`` returns; tokens may be negative (extra usage)."""
        with self._lock:
            tokens = self.grant.tokens
            requests = len(self._released)
            back = sum(tokens[i] for i in self._released)
            back += sum(tokens[i] - used for i, used in self._used.items())
            return requests, back

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self.granted:
            self._limiter._give_back(self.grant, *self.give_back())

    def _check(self, index: int) -> None:
        if not 0 <= index < self.granted:
            raise IndexError(f"job {index} is not in this lease of {self.granted}")
        if self._closed:
            raise RuntimeError("the lease is closed")


# --- one shard item, decoded -------------------------------------------------------


def _b36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, d = divmod(n, 36)
        out = digits[d] + out
        if not n:
            return out


def _slot_attr(metric: str, slot: int) -> str:
    return f"{metric}{_b36(slot)}"


def _prio_attr(rank: int, metric: str, cslot: int) -> str:
    return f"q{rank}{metric}{_b36(cslot)}"


def _open_attr(metric: str, cslot: int) -> str:
    return f"o{metric}{_b36(cslot)}"


def _num(value: AttributeValueTypeDef | None) -> float | None:
    return float(value["N"]) if value and "N" in value else None


def _n(value: float) -> AttributeValueTypeDef:
    return {"N": str(value) if isinstance(value, int) else f"{value:.3f}"}


def _slot_of(now: float) -> int:
    return math.floor(now / SLOT_S)


def _cslot_of(slot: int) -> int:
    return math.floor(slot * SLOT_S / PRIO_SLOT_S)


@dataclass(frozen=True)
class _Limits:
    """A shard's limits: configured (and learned) base, and effective after the factor."""

    base: dict[str, float]
    factor: float
    factor_at: float | None  # time of the last decrease
    factor_base: float  # the factor right after that decrease

    def eff(self, metric: str) -> float:
        return self.base[metric] * self.factor

    def recovery_wait(self, needed_factor: float, now: float) -> float:
        """Seconds until the factor has grown back to ``needed_factor``."""
        if self.factor_at is None or needed_factor > 1:
            return WINDOW_S
        steps = math.ceil((needed_factor - self.factor_base) / AIMD_STEP - 1e-9)
        return max(self.factor_at + steps * AIMD_STEP_EVERY_S - now, MIN_WAIT_S)


def _pace(limit: float, slot: int) -> int:
    """Requests slot ``slot`` may grant: PACE x limit / 60 on average, whole requests."""
    per_slot = PACE * limit * SLOT_S / WINDOW_S
    return math.floor((slot + 1) * per_slot) - math.floor(slot * per_slot)


def _factor(f0: float | None, at: float | None, now: float) -> float:
    if f0 is None or at is None:
        return 1.0
    steps = math.floor(max(0.0, now - at) / AIMD_STEP_EVERY_S)
    return min(1.0, f0 + AIMD_STEP * steps)


@dataclass
class _State:
    """A shard item as seen at ``now``: window usage, per-priority usage, marks, limits."""

    now: float
    slot: int
    limits: _Limits
    window: dict[str, dict[int, int]] = field(default_factory=lambda: {m: {} for m in METRICS})
    prio: dict[int, dict[str, float]] = field(
        default_factory=lambda: defaultdict(lambda: dict.fromkeys(METRICS, 0.0))
    )
    prio_fading: dict[int, dict[str, float]] = field(  # per second, as the oldest slot leaves
        default_factory=lambda: defaultdict(lambda: dict.fromkeys(METRICS, 0.0))
    )
    outstanding: dict[str, int] = field(default_factory=lambda: dict.fromkeys(METRICS, 0))
    marks: dict[int, float] = field(default_factory=dict)
    wants: dict[int, int] = field(default_factory=dict)
    learned: dict[str, float | None] = field(default_factory=dict)
    expired: list[str] = field(default_factory=list)
    prev: dict[str, int | None] = field(default_factory=dict)  # the pinned previous slot

    @property
    def cslot(self) -> int:
        return _cslot_of(self.slot)

    def prio_weight(self, cslot: int) -> float:
        """How much of a 10 s slot lies in the last minute (the oldest one only partly)."""
        start = cslot * PRIO_SLOT_S
        inside = start + PRIO_SLOT_S - (self.now - WINDOW_S)
        return min(1.0, max(0.0, inside / PRIO_SLOT_S))

    def cur(self, metric: str) -> int:
        return self.window[metric].get(self.slot, 0)

    def closed(self, metric: str) -> int:
        return sum(v for s, v in self.window[metric].items() if s != self.slot)

    def used(self, metric: str) -> int:
        return sum(self.window[metric].values())

    def starving(self, rank: int) -> bool:
        return self.now - self.marks.get(rank, -math.inf) < STARVING_S

    def mark_stale(self, rank: int) -> bool:
        return self.now - self.marks.get(rank, -math.inf) >= MARK_EVERY_S


def _decode_attr(st: _State, name: str, value: AttributeValueTypeDef) -> None:
    number = _num(value)
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
            if cslot == st.cslot - PRIO_SLOTS + 1:
                st.prio_fading[rank][metric] = number / PRIO_SLOT_S
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


SPECIAL = {"f", "fa", "lr", "lt", TABLE_PK, TABLE_SK, TABLE_TTL}


def _decode(item: Item, now: float, configured: dict[str, float], shards: int) -> _State:
    learned = {"r": _num(item.get("lr")), "t": _num(item.get("lt"))}
    base = {m: min(configured[m], learned[m] or math.inf) / shards for m in METRICS}  # per shard
    f0, at = _num(item.get("f")), _num(item.get("fa"))
    limits = _Limits(base, _factor(f0, at, now), at, f0 if f0 is not None else 1.0)
    st = _State(now=now, slot=_slot_of(now), limits=limits, learned=learned)
    for name, value in item.items():
        if name not in SPECIAL:
            _decode_attr(st, name, value)
    st.prev = {m: st.window[m].get(st.slot - 1) for m in METRICS}
    return st


# --- the decision ------------------------------------------------------------------


@dataclass(frozen=True)
class _Verdict:
    """Either bounds for the conditional write, or a wait and its reason."""

    bounds: dict[str, int] | None
    wait_s: float = 0.0
    reason: str | None = None


class _Policy:
    """Window, pace, priority holds and the adaptive factor: what one shard allows now."""

    def __init__(self, shares: Sequence[float]) -> None:
        self.shares = shares

    def floor(self, st: _State, rank: int, metric: str) -> float:
        return self.shares[rank] * st.limits.eff(metric)

    def below_floor(self, st: _State, rank: int) -> bool:
        return all(st.prio[rank][m] < self.floor(st, rank, m) for m in METRICS)

    def hold(self, st: _State, rank: int, metric: str, borrowing: bool) -> int:
        """What a priority leaves for others: the unused floors of starving priorities.

        A priority below its floor leaves them to the starving priorities above it; a
        borrower (at or above its floor) to all of them. A held floor is at least the
        request its priority waits with, so a request bigger than a floor finds room.
        The highest starving priority below its floor is never held back: no deadlock.
        """
        held = 0.0
        for q in range(len(self.shares) if borrowing else rank):
            if q != rank and st.starving(q) and self.below_floor(st, q):
                want = 1 if metric == "r" else st.wants.get(q, 0)
                held += max(self.floor(st, q, metric) - st.prio[q][metric], want)
        return math.ceil(held)

    def check(self, st: _State, rank: int, need: dict[str, int]) -> _Verdict:
        """The limit, the pace and the holds; a borrower waits while a higher one starves."""
        borrowing = not self.below_floor(st, rank)
        if borrowing and any(st.starving(q) for q in range(rank)):
            return _Verdict(None, self._floor_wait(st, rank), "priority")
        bounds: dict[str, int] = {}
        waits: list[tuple[float, str]] = []
        for m in METRICS:
            hold = self.hold(st, rank, m, borrowing)
            bound, denied = self._metric(st, m, need[m], hold)
            if denied:
                waits.append(denied)
            bounds[m] = bound
        if waits:
            wait_s, reason = max(waits)
            return _Verdict(None, max(wait_s, MIN_WAIT_S), reason)
        return _Verdict(bounds)

    def _metric(
        self, st: _State, m: str, n: int, hold: int
    ) -> tuple[int, tuple[float, str] | None]:
        limit = st.limits.eff(m)
        if n > limit:
            wait = st.limits.recovery_wait(n / st.limits.base[m], st.now)
            return -1, (wait, "adaptive")
        window_bound = math.floor(limit - st.closed(m) - hold - n)
        cur = st.cur(m)
        if cur > window_bound:
            missing = cur - window_bound
            wait = self._expiry_wait(st, m, missing)
            if hold or (m == "t" and st.outstanding[m] >= missing):
                wait = min(wait, RECHECK_S)  # the holders take their share, give-backs come
            return window_bound, (wait, "window")
        if m != "r":
            return window_bound, None
        pace_bound = max(_pace(limit, st.slot), 1) - n - hold  # one fits an empty slot
        if cur > pace_bound:
            return pace_bound, ((st.slot + 1) * SLOT_S - st.now, "pace")
        return min(window_bound, pace_bound), None

    def _floor_wait(self, st: _State, rank: int) -> float:
        """Seconds until the priority's usage of the last minute is back under its floor."""
        boundary = (st.cslot + 1) * PRIO_SLOT_S - st.now
        waits = []
        for m in METRICS:
            excess = st.prio[rank][m] - self.floor(st, rank, m)
            fading = st.prio_fading[rank][m]
            waits.append(excess / fading if 0 < excess < fading * boundary else boundary)
        return max(min(waits), MIN_WAIT_S)

    @staticmethod
    def _expiry_wait(st: _State, m: str, amount: int) -> float:
        """Seconds until slots holding ``amount`` have left the window."""
        freed = 0
        for slot in sorted(st.window[m]):
            freed += st.window[m][slot]
            if freed >= amount:
                return (slot + WINDOW_SLOTS + 1) * SLOT_S - st.now
        return WINDOW_S


@dataclass(frozen=True)
class _Ask:
    """One acquisition on one shard."""

    model: str
    shard: int
    priority: Priority
    tokens: list[int]

    def outcome(self, slot: int, jobs: list[int], all_jobs: _Verdict) -> Grant:
        """The grant of ``jobs`` (booked in ``slot``); ``all_jobs`` says why not all."""
        complete = len(jobs) == len(self.tokens)
        return Grant(
            model=self.model,
            priority=self.priority,
            shard=self.shard,
            slot=slot,
            tokens=tuple(jobs),
            asked=len(self.tokens),
            wait_s=0.0 if complete else max(all_jobs.wait_s, MIN_WAIT_S),
            reason=None if complete else all_jobs.reason,
        )


# --- DynamoDB requests -------------------------------------------------------------


class _Expr:
    """Builds an update: placeholders for names and values, ADD/SET/REMOVE clauses."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}
        self.values: dict[str, AttributeValueTypeDef] = {}
        self.adds: list[str] = []
        self.sets: list[str] = []
        self.removes: list[str] = []
        self.conditions: list[str] = []

    def name(self, attr: str) -> str:
        key = f"#a{len(self.names)}"
        self.names[key] = attr
        return key

    def value(self, value: float) -> str:
        key = f":v{len(self.values)}"
        self.values[key] = _n(value)
        return key

    def add(self, attr: str, delta: int) -> None:
        self.adds.append(f"{self.name(attr)} {self.value(delta)}")

    def set(self, attr: str, value: float) -> None:
        self.sets.append(f"{self.name(attr)} = {self.value(value)}")

    def at_most(self, attr: str, bound: int) -> None:
        name = self.name(attr)
        self.conditions.append(f"(attribute_not_exists({name}) OR {name} <= {self.value(bound)})")

    def absent_or_equal(self, attr: str, value: float | None) -> None:
        name = self.name(attr)
        if value is None:
            self.conditions.append(f"attribute_not_exists({name})")
        else:
            self.conditions.append(f"{name} = {self.value(value)}")

    def not_grown(self, attr: str, value: int | None) -> None:
        """Pin an attribute that should not have grown since it was read."""
        name = self.name(attr)
        if value is None:
            self.conditions.append(f"attribute_not_exists({name})")
        else:
            self.conditions.append(f"{name} <= {self.value(value)}")

    def older_than(self, attr: str, value: float) -> None:
        name = self.name(attr)
        self.conditions.append(f"(attribute_not_exists({name}) OR {name} < {self.value(value)})")

    def update(self) -> str:
        parts = []
        if self.adds:
            parts.append("ADD " + ", ".join(self.adds))
        if self.sets:
            parts.append("SET " + ", ".join(self.sets))
        if self.removes:
            parts.append("REMOVE " + ", ".join(self.removes))
        return " ".join(parts)


def _key(model: str, shard: int) -> dict[str, AttributeValueTypeDef]:
    return {TABLE_PK: {"S": f"limiter#{model}#{shard}"}, TABLE_SK: {"S": "state"}}


def _failed_item(err: ClientError) -> Item | None:
    if err.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
        raise err
    item: Item | None = err.response.get("Item")  # type: ignore[assignment]
    return item


# --- the limiter -------------------------------------------------------------------


class RateLimiter:
    """One shared rate limit per model for every worker (see the module's design note).

    ``client`` is a low-level boto3 DynamoDB client (the local runtime points it at
    moto), ``table`` the single table of ``resources``. ``shards`` splits a model's
    limits over several items for more than ~2,500 acquisitions/s (an int for every
    model, or per model name). ``clock`` (epoch seconds) and ``rng`` are for tests.
    Thread-safe; one instance per worker process.
    """

    def __init__(
        self,
        client: DynamoDBClient,
        table: str,
        config: Config,
        *,
        shards: int | Mapping[str, int] = 1,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self._ddb = client
        self._table = table
        self._config = config
        self._shards = shards
        self._clock = clock
        self._rng = rng or random.Random()
        shares = [config.priorities[p].share for p in Priority]
        self._policy = _Policy(shares)
        self._cache: dict[tuple[str, int], tuple[int, Item]] = {}
        self._observed: dict[str, tuple[int | None, int | None]] = {}
        self._lock = threading.Lock()

    # -- public API --

    def acquire(self, model: str, priority: Priority, tokens: int) -> Lease:
        """Capacity for one request of ``tokens`` estimated tokens, or how long to wait."""
        return self.lease(model, priority, [tokens])

    def lease(self, model: str, priority: Priority, tokens: Sequence[int]) -> Lease:
        """Capacity for as many of these jobs (estimated tokens each) as fit, in one write.

        ``lease.granted`` is how many of the first jobs may be sent; ``lease.wait_s`` how
        long to wait before asking for the rest. Raises ``RequestTooLargeError`` for a job
        bigger than the whole per-minute limit.
        """
        if not tokens:
            raise ValueError("a lease needs at least one job")
        shards = self.shards(model)
        first = self._rng.randrange(shards)
        denial: Grant | None = None
        for i in range(min(shards, 2)):
            grant = self._try_shard(model, (first + i) % shards, priority, list(tokens))
            if grant.tokens:
                return Lease(self, grant)
            denial = grant if denial is None or grant.wait_s < denial.wait_s else denial
        assert denial is not None
        return Lease(self, denial)

    def reconcile(self, lease: Lease, used_tokens: int) -> None:
        """After a single-job call: the real usage replaces the estimate (one write)."""
        if lease.granted:
            lease.reconcile(0, used_tokens)
        lease.close()

    def report_429(self, model: str) -> None:
        """The provider said 429: halve the limit for everyone (once per cooldown)."""
        for shard in range(self.shards(model)):
            self._decrease(model, shard)

    def observe_limits(
        self, model: str, limit_requests: int | None, limit_tokens: int | None
    ) -> None:
        """The provider's ``x-ratelimit-limit-*``: the real limit, learned (per minute)."""
        learned = (
            limit_requests if limit_requests and limit_requests > 0 else None,
            limit_tokens if limit_tokens and limit_tokens > 0 else None,
        )
        if learned == (None, None) or self._observed.get(model) == learned:
            return
        for shard in range(self.shards(model)):
            self._learn(model, shard, learned)
        self._observed[model] = learned

    def observe_attempt(
        self, model: str, attempt: _AttemptLike, limits: _LimitsLike | None
    ) -> None:
        """Hook for the provider client's ``on_attempt``: 429s and limit headers."""
        if attempt.status == 429:
            self.report_429(model)
        if limits is not None:
            self.observe_limits(model, limits.limit_requests, limits.limit_tokens)

    def status(self, model: str) -> LimiterStatus:
        states = [self._read(model, s, self._clock()) for s in range(self.shards(model))]
        first = states[0]
        return LimiterStatus(
            model=model,
            shards=len(states),
            limit_requests=sum(st.limits.eff("r") for st in states),
            limit_tokens=sum(st.limits.eff("t") for st in states),
            factor=first.limits.factor,
            learned_requests=_opt_int(first.learned["r"]),
            learned_tokens=_opt_int(first.learned["t"]),
            used_requests=sum(st.used("r") for st in states),
            used_tokens=sum(st.used("t") for st in states),
            starving=[p for p in Priority if any(st.starving(p.rank) for st in states)],
        )

    def shards(self, model: str) -> int:
        self._model(model)
        if isinstance(self._shards, int):
            return self._shards
        return self._shards.get(model, 1)

    # -- state --

    def _model(self, model: str) -> dict[str, float]:
        try:
            m = self._config.models[model]
        except KeyError:
            raise ValueError(
                f"unknown model {model!r}; configured: {sorted(self._config.models)}"
            ) from None
        return {"r": float(m.rpm), "t": float(m.tpm)}

    def _state(self, model: str, shard: int, now: float) -> _State:
        """The shard as cached in this slot, else read (strongly consistent)."""
        with self._lock:
            cached = self._cache.get((model, shard))
        if cached and cached[0] == _slot_of(now):
            return _decode(cached[1], now, self._model(model), self.shards(model))
        return self._read(model, shard, now)

    def _read(self, model: str, shard: int, now: float) -> _State:
        resp = self._ddb.get_item(
            TableName=self._table, Key=_key(model, shard), ConsistentRead=True
        )
        item = resp.get("Item", {})
        self._remember(model, shard, now, item)
        return _decode(item, now, self._model(model), self.shards(model))

    def _remember(self, model: str, shard: int, now: float, item: Item | None) -> None:
        with self._lock:
            if item is None:
                self._cache.pop((model, shard), None)
            else:
                self._cache[(model, shard)] = (_slot_of(now), item)

    def _update(self, model: str, shard: int, expr: _Expr, now: float) -> bool:
        """One UpdateItem; True if written. The item that came back is cached either way."""
        expr.set(TABLE_TTL, int(now + ITEM_TTL_S))
        request: UpdateItemInputTypeDef = {
            "TableName": self._table,
            "Key": _key(model, shard),
            "UpdateExpression": expr.update(),
            "ExpressionAttributeNames": expr.names,
            "ExpressionAttributeValues": expr.values,
            "ReturnValues": "ALL_NEW",
        }
        if expr.conditions:
            request["ConditionExpression"] = " AND ".join(expr.conditions)
            request["ReturnValuesOnConditionCheckFailure"] = "ALL_OLD"
        try:
            resp = self._ddb.update_item(**request)
        except ClientError as err:
            self._remember(model, shard, now, _failed_item(err))
            return False
        self._remember(model, shard, now, resp.get("Attributes"))
        return True

    # -- acquire --

    def _try_shard(self, model: str, shard: int, priority: Priority, tokens: list[int]) -> Grant:
        ask = _Ask(model, shard, priority, tokens)
        rank = priority.rank
        for _ in range(MAX_ATTEMPTS):
            now = self._clock()
            st = self._state(model, shard, now)
            self._check_size(model, st, tokens[0])
            jobs, fits, all_jobs = self._fit(st, rank, tokens)
            if not jobs:
                self._mark_starving(model, shard, st, rank, tokens[0])
                return ask.outcome(-1, [], all_jobs)
            assert fits.bounds is not None
            if self._update(model, shard, self._grant_expr(st, rank, jobs, fits.bounds), now):
                return ask.outcome(st.slot, jobs, all_jobs)
        return ask.outcome(-1, [], _Verdict(None, MIN_WAIT_S, "contention"))

    def _fit(
        self, st: _State, rank: int, tokens: list[int]
    ) -> tuple[list[int], _Verdict, _Verdict]:
        """The longest prefix of the jobs that fits and its verdict, and the verdict for all."""
        verdicts: list[_Verdict] = []
        for k in range(len(tokens), 0, -1):
            verdicts.append(self._policy.check(st, rank, {"r": k, "t": sum(tokens[:k])}))
            if verdicts[-1].bounds is not None:
                return tokens[:k], verdicts[-1], verdicts[0]
        return [], verdicts[-1], verdicts[0]

    def _check_size(self, model: str, st: _State, tokens: int) -> None:
        base = st.limits.base
        if tokens <= base["t"] and base["r"] >= 1:
            return
        shards = self.shards(model)
        raise RequestTooLargeError(
            f"model {model}: a request of 1 call and {tokens} estimated tokens does not fit "
            f"a limit of {base['r'] * shards:.0f} requests and {base['t'] * shards:.0f} tokens "
            f"per minute over {shards} limiter shard(s); lower max_tokens or use fewer shards"
        )

    @staticmethod
    def _grant_expr(st: _State, rank: int, jobs: list[int], bounds: dict[str, int]) -> _Expr:
        expr = _Expr()
        need = {"r": len(jobs), "t": sum(jobs)}
        for m in METRICS:
            cur = _slot_attr(m, st.slot)
            expr.at_most(cur, bounds[m])
            expr.not_grown(_slot_attr(m, st.slot - 1), st.prev[m])
            expr.add(cur, need[m])
            expr.add(_prio_attr(rank, m, st.cslot), need[m])
            expr.add(_open_attr(m, st.cslot), need[m])
        expr.removes = [expr.name(a) for a in st.expired[:MAX_REMOVES]]
        return expr

    def _mark_starving(self, model: str, shard: int, st: _State, rank: int, want: int) -> None:
        if not st.mark_stale(rank):
            return
        expr = _Expr()
        expr.older_than(f"s{rank}", st.now - MARK_EVERY_S)
        expr.set(f"s{rank}", st.now)
        expr.set(f"w{rank}", want)
        self._update(model, shard, expr, st.now)

    # -- give back --

    def _give_back(self, grant: Grant, requests: int, tokens: int) -> None:
        """Close a lease in one write: give-backs into the grant's slots, its estimate closed.

        A give-back to a slot already out of the window is dropped; extra usage (a
        negative give-back) then lands in the current slot.
        """
        now = self._clock()
        slot = _slot_of(now)
        cslot = _cslot_of(slot)
        fine = grant.slot if grant.slot >= slot - WINDOW_SLOTS else None
        coarse = _cslot_of(grant.slot) if _cslot_of(grant.slot) > cslot - PRIO_SLOTS else None
        estimate = {"r": len(grant.tokens), "t": sum(grant.tokens)}
        rank = grant.priority.rank
        expr = _Expr()
        for m, back in (("r", requests), ("t", tokens)):
            if back and (fine is not None or back < 0):
                expr.add(_slot_attr(m, slot if fine is None else fine), -back)
            if back and (coarse is not None or back < 0):
                expr.add(_prio_attr(rank, m, cslot if coarse is None else coarse), -back)
            if coarse is not None:
                expr.add(_open_attr(m, coarse), -estimate[m])
        if expr.adds:
            self._update(grant.model, grant.shard, expr, now)

    # -- adaptive --

    def _decrease(self, model: str, shard: int) -> None:
        for _ in range(2):
            now = self._clock()
            st = self._state(model, shard, now)
            last = st.limits.factor_at
            if last is not None and now - last < AIMD_COOLDOWN_S:
                return
            # With the real limit learned from headers, a lone 429 means our window and
            # the provider's disagree at the edge (clock skew, a retry), not a wrong limit;
            # 429s that keep coming (another user of the key, the other metric) halve it.
            known = any(v is not None for v in st.learned.values())
            lone = last is None or now - last >= AIMD_ESCALATE_S
            decrease = AIMD_DECREASE_KNOWN if known and lone else AIMD_DECREASE
            expr = _Expr()
            expr.absent_or_equal("fa", last)
            expr.set("f", max(AIMD_FLOOR, st.limits.factor * decrease))
            expr.set("fa", now)
            if self._update(model, shard, expr, now):
                return

    def _learn(self, model: str, shard: int, learned: tuple[int | None, int | None]) -> None:
        now = self._clock()
        st = self._state(model, shard, now)
        expr = _Expr()
        for attr, metric, value in (("lr", "r", learned[0]), ("lt", "t", learned[1])):
            if value is not None and st.learned[metric] != value:
                expr.set(attr, value)
        if expr.sets:
            self._update(model, shard, expr, now)


def _opt_int(value: float | None) -> int | None:
    return None if value is None else int(value)
