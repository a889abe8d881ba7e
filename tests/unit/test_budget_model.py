"""The budget against a model of its ledger: a stateful property test (hypothesis).

Random sequences of reserve, reserve-many, arm (a call about to be sent), settle,
release, book (a call whose answer was never read: released with its worst case spent),
reclaim (a dead copy's reservation: booked at its worst case if it was armed) and the
passing of time, by two copies of each job (owners ``A`` and ``B``) and by callers that
name no owner, run against the real ``Budget`` on moto. After every step the DynamoDB
ledgers must equal the model's, and the model's invariants must hold:

- ``committed`` = the live reservations + the settled costs + the booked worst cases;
  ``spent`` = the settled costs + the booked worst cases;
- neither ever passes its limit (every settlement here is at most its reservation: the
  provider billed no more than the cap it was sent);
- a job is settled at most once; a reservation held by one copy is never handed to
  another copy before it expires.

Each example runs on a day of its own (the ledger is per UTC day), and stays within it.

The machine runs twice: with one ledger item each, and with the day's ledger in three
shards and the batch's in two (``scale.target_jobs_per_s``), where the sums of the
shards must equal the model's ledgers, each shard stay within its slice of the limit, and
a reservation that fits the shards together is never refused (a shard without room
makes room: ``Budget._make_room``).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import boto3
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from chatbatch.core.config import Config
from chatbatch.core.days import utc_day
from chatbatch.local.aws import create_resources, moto_in_process
from chatbatch.state.budget.budget import RECLAIM_EVERY_S, Budget
from chatbatch.state.budget.errors import (
    AlreadySettled,
    BudgetDeferred,
    HeldElsewhere,
    OverRequestCap,
)
from chatbatch.state.budget.ledger import batch_ledger_key, day_key, share
from chatbatch.state.budget.reservations import Ask, Reservation
from chatbatch.state.ddb import int_of

DAILY = 10_000  # nano-dollars: the day's limit
CAP = 4_000  # budget.request_cap_usd
BATCH_LIMIT = 6_000  # the limited batch's own limit
TTL = 900
MIDNIGHT = 1_790_035_200  # a UTC midnight
JOBS = ("j0", "j1", "j2", "j3", "j4", "j5")
OWNERS = ("A", "B", None)
_days = itertools.count(1)


@dataclass
class Held:
    """The model of one job's reservation item."""

    nanos: int
    owner: str | None
    reclaim_at: float
    limited: bool  # carried by the limited batch's ledger too
    rid: str  # the reservation's id: a stale copy of an older one arms nothing
    settled: int | None = None  # the actual cost, once settled
    armed: bool = False  # a call went out under it: booked, not given back, if it dies
    armed_at: float = 0.0


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class BudgetMachine(RuleBasedStateMachine):
    table: str
    config: Config
    batch_shards = 1  # and the day's: what ``config`` plans

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock(MIDNIGHT + next(_days) * 86_400 + 3_600)
        self.day = utc_day(self.clock.now)
        self.batch = f"limited-{self.day}"
        budget = self.config.budget.model_copy(
            update={
                "daily_usd": Decimal(DAILY) / 10**9,
                "request_cap_usd": Decimal(CAP) / 10**9,
                "reservation_ttl_s": TTL,
            }
        )
        self.budget = Budget(
            boto3.client("dynamodb"),
            self.table,
            self.config.model_copy(update={"budget": budget}),
            clock=self.clock,
            sleep=lambda _s: None,
            rng=random.Random(0),  # the shards picked: the same each time hypothesis replays
        )
        self.day_shards = self.budget.shards(self.day)
        self.held: dict[str, Held] = {}
        self.reservations: dict[str, Reservation] = {}  # as last handed to a caller
        self.reclaimed_at = -RECLAIM_EVERY_S
        self.booked = {False: 0, True: 0}  # worst cases booked: every ledger, the batch's

    # --- the model ---------------------------------------------------------------

    def _key(self, job: str) -> str:
        return f"{self.batch}#{job}"

    def _ledger(self, limited_only: bool) -> tuple[int, int]:
        live = [h for h in self.held.values() if h.limited or not limited_only]
        spent = sum(h.settled for h in live if h.settled is not None) + self.booked[limited_only]
        committed = spent + sum(h.nanos for h in live if h.settled is None)
        return committed, spent

    def _book(self, h: Held) -> None:
        self.booked[False] += h.nanos
        if h.limited:
            self.booked[True] += h.nanos

    def _fits(self, nanos: int, limited: bool) -> str | None:
        """The ledger that refuses ``nanos`` now ("day" first, as the budget reads them)."""
        if self._ledger(False)[0] + nanos > DAILY:
            return "day"
        if limited and self._ledger(True)[0] + nanos > BATCH_LIMIT:
            return "batch"
        return None

    def _reclaim(self) -> None:
        now = self.clock.now
        for job, h in list(self.held.items()):
            if h.settled is None and h.reclaim_at < now:
                if h.armed:
                    self._book(h)
                del self.held[job]

    def _expect_new(self, nanos: int, limited: bool) -> bool:
        """Whether a job with no reservation gets one (with the budget's one reclaim)."""
        refused = self._fits(nanos, limited)
        if refused is None:
            return True
        spent = self._ledger(refused == "batch")[1]
        over = spent + nanos > (DAILY if refused == "day" else BATCH_LIMIT)
        if not over and self.clock.now - self.reclaimed_at >= RECLAIM_EVERY_S:
            self.reclaimed_at = self.clock.now
            self._reclaim()
        return self._fits(nanos, limited) is None

    # --- rules -------------------------------------------------------------------

    @rule(
        job=st.sampled_from(JOBS),
        owner=st.sampled_from(OWNERS),
        nanos=st.integers(500, 5_000),
        limited=st.booleans(),
    )
    def reserve(self, job: str, owner: str | None, nanos: int, limited: bool) -> None:
        limit = BATCH_LIMIT if limited else None
        h = self.held.get(job)
        try:
            got = self.budget.reserve(
                self._key(job),
                nanos,
                batch_id=self.batch,
                batch_limit_nanos=limit,
                owner=owner,
                batch_shards=self.batch_shards,
            )
        except OverRequestCap:
            assert nanos > CAP
            return
        except AlreadySettled:
            assert h is not None and h.settled is not None
            return
        except HeldElsewhere:
            assert h is not None and h.settled is None
            other_copy = owner and h.owner and h.owner != owner and h.reclaim_at > self.clock.now
            # a call went out under it and its worker may still be alive
            in_call = (
                h.armed
                and h.armed_at + self.config.worker.timeout_s > self.clock.now
                and h.reclaim_at > self.clock.now
            )
            assert other_copy or in_call
            return
        except BudgetDeferred:
            assert nanos <= CAP and h is None
            assert not self._expect_new(nanos, limited)
            return
        assert nanos <= CAP
        if h is None:
            assert self._expect_new(nanos, limited), "reserved past a limit"
            assert not got.resumed and got.nanos == nanos
            h = self.held[job] = Held(nanos, owner, self.clock.now + TTL, limited, got.rid)
        else:
            assert h.settled is None, "a settled job was reserved again"
            taking_over = owner and h.owner and h.owner != owner
            assert not taking_over or h.reclaim_at <= self.clock.now, "taken before expiry"
            assert got.resumed and got.nanos == h.nanos and got.rid == h.rid
            assert got.armed == h.armed, "a copy must know a call went out under it"
            h.owner, h.reclaim_at = owner or h.owner, self.clock.now + TTL
        self.reservations[job] = got

    @rule(jobs=st.lists(st.sampled_from(JOBS), min_size=2, max_size=4, unique=True))
    def reserve_many(self, jobs: list[str]) -> None:
        asks = [Ask(self._key(j), 900, self.batch, None, f"m-{j}") for j in jobs]
        got = self.budget.reserve_many(asks)
        fresh = not any(j in self.held for j in jobs)
        # sharded, the group charges one shard: it may lack room the shards have together
        granted = fresh and self._fits(900 * len(jobs), False) is None
        if granted and (got or self.day_shards == 1):
            assert set(got) == {a.job_key for a in asks}
            for j in jobs:
                self.held[j] = Held(
                    900, f"m-{j}", self.clock.now + TTL, False, got[self._key(j)].rid
                )
                self.reservations[j] = got[self._key(j)]
        else:
            assert got == {}, "all or nothing"

    @rule(job=st.sampled_from(JOBS), fraction=st.sampled_from([0, 0.25, 1.0]))
    def settle(self, job: str, fraction: float) -> None:
        r = self.reservations.get(job)
        if r is None:
            return
        h = self.held.get(job)
        actual = int(r.nanos * fraction)
        done = self.budget.settle(r, actual)
        assert done == (h is not None and h.settled is None), "settled twice, or not at all"
        if done and h is not None:
            h.settled = actual

    @rule(job=st.sampled_from(JOBS))
    def release(self, job: str) -> None:
        r = self.reservations.get(job)
        if r is None:
            return
        h = self.held.get(job)
        done = self.budget.release(r)
        assert done == (h is not None and h.settled is None)
        if done:
            del self.held[job]

    @rule(job=st.sampled_from(JOBS))
    def arm(self, job: str) -> None:
        r = self.reservations.get(job)
        if r is None:
            return
        h = self.held.get(job)
        done = self.budget.arm(r)
        mine = h is not None and h.settled is None and h.rid == r.rid
        first = h is not None and not h.armed  # a reservation carries one call
        assert done == (mine and first and (r.owner is None or h.owner == r.owner))  # type: ignore[union-attr]
        if done and h is not None:
            h.armed, h.armed_at = True, self.clock.now

    @rule(job=st.sampled_from(JOBS))
    def die_in_call(self, job: str) -> None:
        """A worker marks its reservation, sends the call and dies; the reservation expires
        and is reclaimed: booked at its worst case, never given back."""
        self.arm(job)
        self.wait(TTL + 1)
        self.reclaim()

    @rule(job=st.sampled_from(JOBS))
    def book(self, job: str) -> None:
        """The call's answer was never read: give the reservation back, its worst case spent."""
        r = self.reservations.get(job)
        if r is None:
            return
        h = self.held.get(job)
        done = self.budget.release(r, spent_nanos=r.nanos)
        assert done == (h is not None and h.settled is None)
        if done and h is not None:
            self._book(h)
            del self.held[job]

    @rule(seconds=st.sampled_from([1, 60, 400, TTL + 1]))
    def wait(self, seconds: int) -> None:
        self.clock.now += seconds
        assert utc_day(self.clock.now) == self.day  # the example stays within its day

    @precondition(lambda self: bool(self.held))
    @rule()
    def reclaim(self) -> None:
        self.budget.reclaim(self.day)
        self._reclaim()

    # --- invariants --------------------------------------------------------------

    def _read(self, keys: list[dict[str, Any]], limit: int) -> tuple[int, int]:
        """The ledger's (committed, spent), summed over its shards, each within its slice."""
        committed = spent = 0
        for shard, key in enumerate(keys):
            got = self.budget._ddb.get_item(TableName=self.table, Key=key, ConsistentRead=True)
            ledger = got.get("Item", {})
            assert int_of(ledger, "committed") <= share(limit, len(keys), shard)
            committed += int_of(ledger, "committed")
            spent += int_of(ledger, "spent")
        return committed, spent

    @invariant()
    def ledgers_match_the_model_and_stay_within_their_limits(self) -> None:
        day = self._read([day_key(self.day, i) for i in range(self.day_shards)], DAILY)
        batch_keys = [batch_ledger_key(self.batch, i) for i in range(self.batch_shards)]
        batch = self._read(batch_keys, BATCH_LIMIT)
        assert day == self._ledger(False)
        assert batch == self._ledger(True)
        assert day[1] <= day[0] <= DAILY
        assert batch[1] <= batch[0] <= BATCH_LIMIT


@pytest.fixture(scope="module")
def table(config: Config) -> Iterator[str]:
    with moto_in_process():
        yield create_resources(config).table


@pytest.mark.parametrize("sharded", [False, True], ids=["one item", "sharded"])
def test_the_budget_follows_its_model(config: Config, table: str, sharded: bool) -> None:
    BudgetMachine.table = table
    BudgetMachine.config = config
    BudgetMachine.batch_shards = 1
    if sharded:  # the day's ledger in 3 shards (2.9 items at half their limit, busiest x1.3)
        scale = config.scale.model_copy(update={"target_jobs_per_s": 2_800})
        BudgetMachine.config = config.model_copy(update={"scale": scale})
        BudgetMachine.batch_shards = 2
    run_state_machine_as_test(
        BudgetMachine,
        settings=settings(
            max_examples=60,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
