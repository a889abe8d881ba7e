"""``RateLimiter``: the shared rate limit, acquired and given back with DynamoDB writes.

It reads a shard (at most once per slot; the item a write returns is cached), asks the
``policy`` what fits, and books it with one conditional ``UpdateItem`` built by ``item``;
a write that lost a race retries on the item that came back. ``acquire``/``lease`` hand
out ``Lease``s; 429s and limit headers adapt the limit (design note:
``chatbatch.state.limiter``).
"""

from __future__ import annotations

import dataclasses
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from botocore.exceptions import ClientError
from pydantic import BaseModel

from chatbatch.core.config import Config, Priority
from chatbatch.core.resources import TABLE_TTL
from chatbatch.core.scale import plan
from chatbatch.state.ddb import Update
from chatbatch.state.limiter.item import (
    ITEM_TTL_S,
    Item,
    decode,
    decrease_update,
    give_back_update,
    grant_update,
    key,
    learned_update,
    opt_int,
    send_times,
    starving_update,
)
from chatbatch.state.limiter.lease import Grant, Lease
from chatbatch.state.limiter.policy import (
    HORIZON_S,
    MIN_WAIT_S,
    RECHECK_S,
    REFILL_AT,
    Policy,
    State,
    Verdict,
    interval_s,
    slot_of,
)
from chatbatch.state.limiter.spares import Spares

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

MAX_ATTEMPTS = 8  # conditional-write retries before a denial
PACE_SPREAD_S = REFILL_AT * HORIZON_S / 2  # waits for a send are spread over this much
MAX_DOUBLINGS = 2  # ... doubled per denial in a row while a higher priority starves, up to 4x


class RequestTooLargeError(ValueError):
    """A request that can never fit the limit (more tokens than a whole minute allows)."""


class LimiterStatus(BaseModel):
    """One model's limiter right now, all shards together (for ``status``)."""

    model: str
    shards: int
    limit_requests: float
    limit_tokens: float
    factor: float
    burst: float  # the spacing's own factor (429s of a period shorter than a minute)
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

    @property
    def remaining_requests(self) -> int | None: ...

    @property
    def remaining_tokens(self) -> int | None: ...


def minute_has_room(limits: _LimitsLike | None) -> bool:
    """A 429 whose headers say at least a tenth of the minute is left: the minute's limit
    did not refuse it (a shorter period's did, or a fault), so the minute's limit stays."""
    if limits is None:
        return False
    pairs = (
        (limits.remaining_requests, limits.limit_requests),
        (limits.remaining_tokens, limits.limit_tokens),
    )
    known = [(left, limit) for left, limit in pairs if left is not None and limit]
    return bool(known) and all(left >= limit / 10 for left, limit in known)


@dataclass(frozen=True)
class _Ask:
    """One acquisition on one shard."""

    model: str
    shard: int
    priority: Priority
    tokens: list[int]

    def outcome(
        self,
        slot: int,
        jobs: list[int],
        more: Verdict,
        starts: tuple[float, ...] = (),
        spacing_s: float = 0.0,
    ) -> Grant:
        """The grant of ``jobs`` (booked in ``slot``, sent at ``starts``); ``more`` says
        why not all."""
        complete = len(jobs) == len(self.tokens)
        return Grant(
            model=self.model,
            priority=self.priority,
            shard=self.shard,
            slot=slot,
            tokens=tuple(jobs),
            starts=starts,
            spacing_s=spacing_s,
            asked=len(self.tokens),
            wait_s=0.0 if complete else max(more.wait_s, MIN_WAIT_S),
            reason=None if complete else more.reason,
        )


def _failed_item(err: ClientError) -> Item | None:
    if err.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
        raise err
    item: Item | None = err.response.get("Item")  # type: ignore[assignment]
    return item


class RateLimiter:
    """One shared rate limit per model for every worker (design note: ``chatbatch.state.limiter``).

    ``client`` is a low-level boto3 DynamoDB client (the local runtime points it at
    moto), ``table`` the single table of ``resources``. ``shards`` splits a model's
    limits over several items for more than ~2,500 acquisitions/s (an int for every
    model, or per model name; by default what ``scale.target_jobs_per_s`` needs:
    ``core/scale.py``). ``clock`` (epoch seconds) and ``rng`` are for tests.
    Thread-safe; one instance per worker process.
    """

    def __init__(
        self,
        client: DynamoDBClient,
        table: str,
        config: Config,
        *,
        shards: int | Mapping[str, int] | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self._ddb = client
        self._table = table
        self._config = config
        self._shards = (plan(config).limiter_shards or 1) if shards is None else shards
        self._clock = clock
        self._rng = rng or random.Random()
        shares = [config.priorities[p].share for p in Priority]
        self._policy = Policy(shares)
        self._cache: dict[tuple[str, int], tuple[int, Item]] = {}
        self._spares = Spares()
        self._denials: dict[tuple[str, int], int] = {}  # pace denials in a row (backoff)
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
                return Lease(grant, self._give_back, self._unsent)
            denial = grant if denial is None or grant.wait_s < denial.wait_s else denial
        assert denial is not None
        return Lease(denial, self._give_back)

    def reconcile(self, lease: Lease, used_tokens: int) -> None:
        """After a single-job call: the real usage replaces the estimate (one write)."""
        if lease.granted:
            lease.reconcile(0, used_tokens)
        lease.close()

    def report_429(self, model: str) -> None:
        """The provider said 429: halve the limit for everyone (once per cooldown)."""
        for shard in range(self.shards(model)):
            self._decrease(model, shard, burst=False)

    def report_burst_429(self, model: str) -> None:
        """A 429 of a period shorter than the minute: the sends, from every worker, are
        spaced a tenth wider (once per cooldown; it grows back by itself)."""
        for shard in range(self.shards(model)):
            self._decrease(model, shard, burst=True)

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
        """Hook for the provider client's ``on_attempt``: 429s and limit headers. A 429 that
        is an account error (``insufficient_quota``) is no rate limit: nothing changes. One
        whose headers show the minute with room was refused by a shorter period: the
        sends are spaced wider, the minute's limit stays."""
        rate_limited = attempt.status == 429 and getattr(attempt, "account", None) is None
        if rate_limited and minute_has_room(limits):
            self.report_burst_429(model)
        elif rate_limited:
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
            burst=first.limits.burst,
            learned_requests=opt_int(first.learned["r"]),
            learned_tokens=opt_int(first.learned["t"]),
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

    def _decode(self, model: str, item: Item, now: float) -> State:
        return decode(item, now, self._model(model), self.shards(model))

    def _state(self, model: str, shard: int, now: float) -> State:
        """The shard as cached in this slot, else read (strongly consistent)."""
        with self._lock:
            cached = self._cache.get((model, shard))
        if cached and cached[0] == slot_of(now):
            return self._decode(model, cached[1], now)
        return self._read(model, shard, now)

    def _read(self, model: str, shard: int, now: float) -> State:
        resp = self._ddb.get_item(TableName=self._table, Key=key(model, shard), ConsistentRead=True)
        item = resp.get("Item", {})
        self._remember(model, shard, now, item)
        return self._decode(model, item, now)

    def _remember(self, model: str, shard: int, now: float, item: Item | None) -> None:
        with self._lock:
            if item is None:
                self._cache.pop((model, shard), None)
            else:
                self._cache[(model, shard)] = (slot_of(now), item)

    def _update(self, model: str, shard: int, expr: Update, now: float) -> Item | None:
        """One UpdateItem: the item as written, or None if a condition failed. The item
        that came back is cached either way."""
        expr.set(TABLE_TTL, int(now + ITEM_TTL_S))
        request: dict[str, Any] = {
            "TableName": self._table,
            "Key": key(model, shard),
            **expr.params(),
            "ReturnValues": "ALL_NEW",
        }
        if expr.conditions:
            request["ReturnValuesOnConditionCheckFailure"] = "ALL_OLD"
        try:
            resp = self._ddb.update_item(**request)
        except ClientError as err:
            self._remember(model, shard, now, _failed_item(err))
            return None
        written: Item = resp.get("Attributes", {})
        self._remember(model, shard, now, written)
        return written

    # -- acquire --

    def _try_shard(self, model: str, shard: int, priority: Priority, tokens: list[int]) -> Grant:
        ask = _Ask(model, shard, priority, tokens)
        rank = priority.rank
        for _ in range(MAX_ATTEMPTS):
            now = self._clock()
            st = self._state(model, shard, now)
            # any job of the lease (not just its first): one too large behind one that
            # fits would otherwise be told to wait a minute for a limit it can never fit
            self._check_size(model, st, max(tokens))
            spares = self._spares.take(model, shard, now, len(tokens))
            st.spare = len(spares)
            jobs, fits, more = self._fit(st, rank, tokens)
            used, spares = spares[: len(jobs)], spares[len(jobs) :]
            self._spares.put(model, shard, spares, now)
            if not jobs:
                self._mark_starving(model, shard, st, rank, tokens[0], more.wait_s)
                backoff = self._backoff(model, shard, st, rank)
                return ask.outcome(-1, [], self._spread(more, backoff))
            assert fits.bounds is not None
            st.spare = len(used)
            served = len(jobs) == len(tokens)
            expr = grant_update(
                st, rank, jobs, fits.bounds, horizon_s=fits.horizon_s, served=served
            )
            written = self._update(model, shard, expr, now)
            if written is not None:
                starts = (*used, *send_times(written, st, len(jobs) - len(used)))
                self._denials.pop((model, shard), None)
                spacing = interval_s(st.limits.pace())
                return ask.outcome(st.slot, jobs, self._spread(more), starts, spacing)
            self._spares.put(model, shard, used, now)
        contention = Verdict(None, MIN_WAIT_S, "contention")
        return ask.outcome(-1, [], self._spread(contention, self._backoff(model, shard, st, rank)))

    def _backoff(self, model: str, shard: int, st: State, rank: int) -> int:
        """How many times to double the spread of this denial's wait: once more per pace
        denial in a row of this instance on the shard (up to ``MAX_DOUBLINGS``), unless no
        higher priority is starving: the priority that is served next asks undelayed."""
        top = not any(st.starving(q) for q in range(rank))
        with self._lock:
            doublings = self._denials.get((model, shard), 0)
            self._denials[(model, shard)] = min(doublings + 1, MAX_DOUBLINGS)
        return 0 if top else doublings

    def _spread(self, more: Verdict, doublings: int = 0) -> Verdict:
        """A wait for the spacing (or after lost races), spread at random over a quarter
        of the horizon, ``doublings`` times doubled (``_backoff``): every worker told to
        wait for the same send would otherwise ask at the same instant, and all but one
        lose their write (half the horizon is still booked meanwhile, so the provider
        stays busy)."""
        if more.reason not in ("pace", "contention"):
            return more
        spread = self._rng.uniform(0, PACE_SPREAD_S * 2**doublings)
        return dataclasses.replace(more, wait_s=more.wait_s + spread)

    def _fit(self, st: State, rank: int, tokens: list[int]) -> tuple[list[int], Verdict, Verdict]:
        """The longest prefix of the jobs that fits and its verdict, and the verdict for one
        job more: its wait is when the next job fits (asking then keeps the sends booked
        ahead; waiting until all fit would let the spacing run dry). None when only crumbs
        of the pace fit (fewer than its refill share, and more were asked)."""
        verdicts: list[Verdict] = []
        for k in range(len(tokens), 0, -1):
            verdicts.append(self._policy.check(st, rank, {"r": k, "t": sum(tokens[:k])}))
            if verdicts[-1].bounds is None:
                continue
            more = verdicts[-2] if k < len(tokens) else verdicts[-1]
            alone = k < len(tokens) and st.limits.fits(tokens[k], adapted=True)
            if more.reason == "adaptive" and alone:
                # the jobs together are bigger than the limit, the next one alone is not:
                # it waits for room in the window (give-backs of open leases may free it
                # soon), not a minute for the limit to grow past their sum
                more = Verdict(None, RECHECK_S, "window")
            if more.reason == "pace" and k < min(len(tokens), Policy.refill(st)):
                # Crumbs of the horizon (a send or two that came free) go to nobody: every
                # waiting worker would race for them and all but one lose the write. The
                # jobs ask again when the refill share fits, one grant of several sends.
                return [], more, more
            return tokens[:k], verdicts[-1], more
        return [], verdicts[-1], verdicts[-1]

    def _check_size(self, model: str, st: State, tokens: int) -> None:
        if st.limits.fits(tokens, adapted=False):
            return
        base = st.limits.base
        shards = self.shards(model)
        raise RequestTooLargeError(
            f"model {model}: a request of 1 call and {tokens} estimated tokens does not fit "
            f"a limit of {base['r'] * shards:.0f} requests and {base['t'] * shards:.0f} tokens "
            f"per minute over {shards} limiter shard(s); lower max_tokens or use fewer shards"
        )

    def _mark_starving(
        self, model: str, shard: int, st: State, rank: int, want: int, wait_s: float
    ) -> None:
        until = st.starving_until(wait_s)
        if st.mark_stale(rank, until):
            self._update(model, shard, starving_update(st, rank, want, until), st.now)

    # -- give back --

    def _unsent(self, grant: Grant, index: int) -> None:
        """A job of ``grant`` released before its send time: the time goes to the next grant."""
        if index < len(grant.starts):
            self._spares.put(grant.model, grant.shard, [grant.starts[index]], self._clock())

    def _give_back(self, grant: Grant, requests: int, tokens: int) -> None:
        """Close a lease in one write: give-backs into the grant's slots, its estimate closed."""
        now = self._clock()
        expr = give_back_update(grant, requests, tokens, now)
        if expr.adds:
            self._update(grant.model, grant.shard, expr, now)

    # -- adaptive --

    def _decrease(self, model: str, shard: int, *, burst: bool) -> None:
        for _ in range(2):
            now = self._clock()
            st = self._state(model, shard, now)
            if burst:
                attr, last, new_factor = "fb", st.limits.burst_at, st.burst_after_429()
            else:
                attr, last, new_factor = "f", st.limits.factor_at, st.factor_after_429()
            if new_factor is None:
                return
            expr = decrease_update(last, new_factor, now, attr)
            if self._update(model, shard, expr, now) is not None:
                return

    def _learn(self, model: str, shard: int, learned: tuple[int | None, int | None]) -> None:
        now = self._clock()
        st = self._state(model, shard, now)
        expr = learned_update(st, learned)
        if expr.sets:
            self._update(model, shard, expr, now)
