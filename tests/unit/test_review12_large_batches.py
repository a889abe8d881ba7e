"""Adversarial review of invocations of up to 100 jobs (``worker.batch_size`` above 10):
the group commit split into several transactions (``worker/finals.py``) and
``Budget.reserve_many`` reserving the longest prefix one transaction holds, on moto.

The promises attacked: no transaction above DynamoDB's 100 items; every job settled once
(its state, its reservation, the batch's counters and the day's ledger each moved once);
nothing left reserved; a group's open marker never deleted while a job it names holds an
open reservation (that would hide a crashed job's reservation from ``reclaim``), and
never left once all it names are closed; a refused transaction leaves none of its jobs
half-settled, whichever of the group's transactions it is.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import boto3
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from chatbatch.core.config import Config
from chatbatch.local.aws import create_table
from chatbatch.state.batches import Batches, JobState, batch_key, counter_key
from chatbatch.state.budget.budget import Budget
from chatbatch.state.budget.ledger import batch_ledger_key, open_key, reservation_key
from chatbatch.state.budget.reservations import Ask, MarkerAt, Reservation
from chatbatch.state.ddb import MAX_TRANSACT_ITEMS, plain
from chatbatch.worker.crash import WorkerCrash
from chatbatch.worker.finals import Final, Finals
from tests.unit.conftest import REGION, Dynamo
from tests.unit.test_finals import Objects, lines

WORST = 1_000  # every job's reservation
SHARDS = 4  # counter shards a batch may use here
_tables = itertools.count()


class Services:
    """What ``Finals`` uses of a worker's services, on moto. Every group transaction is
    recorded (its size and whether it committed); one that deletes a group marker is
    checked, right after it committed, against the reservations that marker names."""

    def __init__(self, dynamo: Dynamo, config: Config) -> None:
        self.dynamo = dynamo
        self.store = Objects()
        self.batches = Batches(dynamo.client, dynamo.table)
        self.budget = Budget(dynamo.client, dynamo.table, config)
        self.commits: list[tuple[int, bool]] = []
        self.groups: dict[str, list[str]] = {}  # marker id -> the jobs it names
        self.open_at_marker_delete: list[list[str]] = []
        self.crash_on: int | None = None  # the group transaction (its index) that "dies"
        real = self.batches.commit

        def commit(items: Any) -> bool:
            if self.crash_on == len(self.commits):
                raise WorkerCrash("the instance died between two group transactions")
            committed = False
            try:
                committed = real(items)
                return committed
            finally:
                self.commits.append((len(items), committed))
                if committed:
                    self._check_marker_deletes(items)

        self.batches.commit = commit  # type: ignore[method-assign]

    def _check_marker_deletes(self, items: Any) -> None:
        for item in items:
            key = item.get("Delete", {}).get("Key", {})
            marker = key.get("sk", {}).get("S", "")
            if key.get("pk", {}).get("S", "").startswith("budget#open#") and marker in self.groups:
                still = self.budget.open_in_group(marker, self.groups[marker])
                self.open_at_marker_delete.append([r.job_key for r, _ in still])


@dataclass
class Job:
    custom_id: str
    batch: str
    cost: int
    held: Reservation | None = None
    refused: bool = False  # another copy ended it (failed) since the invocation read it
    leaves: bool = False  # never arrives: ends another way keeping its reservation open
    outcome: bool | None = None  # the group's answer to its commit
    alone: bool | None = None  # its own transaction's, when it had to make one

    @property
    def key(self) -> str:
        return f"{self.batch}#{self.custom_id}"


@dataclass
class Invocation:
    services: Services
    jobs: list[Job]
    shards: dict[str, int | None]  # each batch's counter shard (None: the meta item)
    limits: dict[str, int | None]  # each batch's budget
    finals: Finals = field(init=False)
    marker: MarkerAt | None = None

    def __post_init__(self) -> None:
        self.finals = Finals(self.services, [j.custom_id for j in self.jobs])  # type: ignore[arg-type]

    def ask(self, job: Job) -> Ask:
        return Ask(job.key, WORST, job.batch, self.limits[job.batch], job.custom_id)

    def reserve(self, together: list[Job]) -> None:
        """``together`` through ``reserve_many`` (the prefix it takes), the rest alone."""
        held = self.services.budget.reserve_many([self.ask(j) for j in together])
        if held:
            first = next(iter(held.values()))
            assert first.marker is not None
            self.marker = first.marker_at()
            self.finals.cover(self.marker, held)
            self.services.groups[first.marker] = list(held)
        for job in self.jobs:
            job.held = held.get(job.key) or self.services.budget.reserve(
                job.key,
                WORST,
                batch_id=job.batch,
                batch_limit_nanos=self.limits[job.batch],
                owner=job.custom_id,
            )

    def final(self, job: Job, flush: str = "") -> Final:
        """Its final transaction's parts; with ``flush``, its state names that flush (as
        ``results._final`` has it) and the Final places its lines there."""
        assert job.held is not None
        move, deltas = self.services.batches.move(
            job.batch,
            job.custom_id,
            JobState.new,
            JobState.succeeded,
            {"cost_nanos": job.cost},
            {"flush": {"S": flush}} if flush else None,
        )
        own, ledgers = self.services.budget.settle_parts(job.held, job.cost)
        return Final(
            job=job.key,
            batch_id=job.batch,
            custom_id=job.custom_id,
            own=[move, *own],
            ledgers=ledgers,
            counters=deltas,
            shard=self.shards[job.batch],
            flush=flush,
        )

    async def arrive(self, job: Job, alone: bool = True) -> None:
        """The job's final transaction: with the group, else its own from the state it
        finds (as ``results._settle`` does: the answer in hand ends the job from there)."""
        await asyncio.sleep(0)
        if job.leaves:
            self.finals.leave(job.custom_id)
            return
        job.outcome = await self.finals.commit(job.custom_id, self.final(job))
        if job.outcome or not alone:
            return
        assert job.held is not None
        (record,) = self.services.batches.jobs(job.batch, [job.custom_id])
        job.alone = self.services.batches.transition(
            job.batch,
            job.custom_id,
            prev=record.state,
            new=JobState.succeeded,
            counters={"cost_nanos": job.cost},
            extra=self.services.budget.settle_items(job.held, job.cost),
            shard=self.shards[job.batch],
        )
        await self.finals.settled(job.custom_id, job.alone)

    def run(self, order: list[int], alone: bool = True) -> None:
        for job in self.jobs:
            if job.refused:
                assert self.services.batches.transition(
                    job.batch, job.custom_id, prev=JobState.new, new=JobState.failed
                )

        async def everything() -> None:
            await asyncio.gather(*(self.arrive(self.jobs[i], alone) for i in order))
            await self.finals.end([])

        asyncio.run(everything())


def counters(services: Services, batch: str) -> dict[str, int]:
    """The batch's counters summed over its meta item and every counter shard."""
    total: dict[str, int] = {}
    for key in [batch_key(batch), *(counter_key(batch, k) for k in range(SHARDS))]:
        item = services.dynamo.client.get_item(
            TableName=services.dynamo.table, Key=key, ConsistentRead=True
        ).get("Item", {})
        for name, value in plain(item).items():
            if name in ("succeeded", "failed", "cost_nanos") and isinstance(value, int):
                total[name] = total.get(name, 0) + value
    return total


def open_markers(services: Services, day: str) -> dict[str, list[str]]:
    """The day's open markers (every shard of its partition): id -> the jobs it names."""
    found: dict[str, list[str]] = {}
    for shard in range(services.budget.shards(day)):
        at = open_key(day, "", shard)["pk"]["S"]
        reply = services.dynamo.client.query(
            TableName=services.dynamo.table,
            KeyConditionExpression="pk = :pk",
            ExpressionAttributeValues={":pk": {"S": at}},
        )
        for item in reply["Items"]:
            jobs = [j["S"] for j in item["jobs"]["L"]] if "jobs" in item else [item["sk"]["S"]]
            found[item["sk"]["S"]] = jobs
    return found


def reservation(services: Services, job: str) -> dict[str, Any]:
    item = services.dynamo.client.get_item(
        TableName=services.dynamo.table, Key=reservation_key(job), ConsistentRead=True
    )
    return plain(item.get("Item", {}))


@pytest.fixture
def fresh(aws: None, config: Config) -> Iterator[Any]:
    """A maker of new tables on moto: one per hypothesis example (nothing carried over)."""
    client = boto3.client("dynamodb", region_name=REGION)

    def make() -> Services:
        table = f"review12-{next(_tables)}"
        create_table(client, table)
        return Services(Dynamo(client, table), config)

    yield make


def check(inv: Invocation) -> None:
    """The promises, from what is in DynamoDB after the invocation (and each job's own
    transaction where it had to make one)."""
    services = inv.services
    assert all(size <= MAX_TRANSACT_ITEMS for size, _ in services.commits), services.commits
    assert all(not still for still in services.open_at_marker_delete), (
        "a group marker deleted while reservations it names were open",
        services.open_at_marker_delete,
    )
    arrived = [j for j in inv.jobs if not j.leaves]
    for job in arrived:
        assert job.outcome or job.alone, f"{job.key} settled neither with the group nor alone"
        r = reservation(services, job.key)
        assert (r["state"], r.get("actual")) == ("settled", job.cost), job.key
    for job in inv.jobs:
        if job.leaves:
            assert reservation(services, job.key)["state"] == "reserved"
    for batch in {j.batch for j in inv.jobs}:
        mine = [j for j in arrived if j.batch == batch]
        got = counters(services, batch)
        assert got.get("succeeded", 0) == len(mine), batch
        gone = [j for j in inv.jobs if j.batch == batch and j.refused and j.leaves]
        assert got.get("failed", 0) == len(gone), batch
        assert got.get("cost_nanos", 0) == sum(j.cost for j in mine), batch
    assert inv.jobs[0].held is not None
    day = inv.jobs[0].held.day
    usage = services.budget.usage(day)
    assert round(usage.spent_usd * 10**9) == sum(j.cost for j in arrived)
    assert round(usage.reserved_usd * 10**9) == WORST * sum(j.leaves for j in inv.jobs)
    # an open marker names at least one open reservation; every open one has a marker
    markers = open_markers(services, day)
    for marker, jobs in markers.items():
        if marker.startswith("group#"):
            assert services.budget.open_in_group(marker, jobs), f"{marker} names none open"
    covered = {j for jobs in markers.values() for j in jobs}
    assert {j.key for j in inv.jobs if j.leaves} <= covered, "an open reservation unmarked"


@st.composite
def invocations(draw: st.DrawFn) -> dict[str, Any]:
    size = draw(st.integers(2, 100))
    batches = draw(st.integers(1, 3))
    return {
        "batch_of": draw(st.lists(st.integers(0, batches - 1), min_size=size, max_size=size)),
        "costs": draw(st.lists(st.integers(0, WORST), min_size=size, max_size=size)),
        "together": draw(st.lists(st.booleans(), min_size=size, max_size=size)),
        "refused": draw(st.sets(st.integers(0, size - 1), max_size=3)),
        "leaves": draw(st.sets(st.integers(0, size - 1), max_size=2)),
        "order": draw(st.permutations(range(size))),
        "shards": [draw(st.none() | st.integers(0, SHARDS - 1)) for _ in range(batches)],
        "limits": [draw(st.none() | st.just(10**9)) for _ in range(batches)],
    }


def build(services: Services, case: dict[str, Any]) -> Invocation:
    jobs = [
        Job(f"j{i:03}", f"b{b}", cost, refused=i in case["refused"], leaves=i in case["leaves"])
        for i, (b, cost) in enumerate(zip(case["batch_of"], case["costs"], strict=True))
    ]
    names = [f"b{b}" for b in range(len(case["shards"]))]
    return Invocation(
        services,
        jobs,
        dict(zip(names, case["shards"], strict=True)),
        dict(zip(names, case["limits"], strict=True)),
    )


@settings(
    max_examples=8,
    # no shrinking: a failing group of 100 jobs takes minutes to shrink on moto
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=invocations())
def test_any_group_commits_each_job_once_and_closes_its_marker_only_when_all_are(
    fresh: Any, case: dict[str, Any]
) -> None:
    """Random groups of 2..100 jobs over 1..3 batches (sharded counters or not, limited
    budgets or not), some reserved together and the others alone, a few refused (another
    copy ended them), a few leaving with their reservation open, arriving in any order."""
    inv = build(fresh(), case)
    inv.reserve([j for j, together in zip(inv.jobs, case["together"], strict=True) if together])
    inv.run(case["order"])
    check(inv)


@pytest.mark.parametrize("refused_first", [True, False])
def test_a_marker_split_across_transactions_one_of_them_refused(
    fresh: Any, refused_first: bool
) -> None:
    """70 jobs of one marker make two transactions; the earlier (or the later) is refused:
    the other commits, the marker stays until the refused part settled alone, then the
    invocation's end closes it."""
    inv = build(
        fresh(),
        {
            "batch_of": [0] * 70,
            "costs": [7] * 70,
            "refused": {0 if refused_first else 69},
            "leaves": set(),
            "shards": [None],
            "limits": [None],
        },
    )
    inv.reserve(inv.jobs)
    inv.run(list(range(70)))
    assert [ok for _, ok in inv.services.commits] == (
        [False, True] if refused_first else [True, False]
    )
    check(inv)
    assert open_markers(inv.services, inv.jobs[0].held.day) == {}  # type: ignore[union-attr]


def test_a_marker_closed_by_the_first_transaction_is_deleted_again_harmlessly(
    fresh: Any,
) -> None:
    """The marker names only jobs of the first transaction; the second (jobs reserved
    alone) deletes it again (an unconditional delete): it still commits."""
    inv = build(
        fresh(),
        {
            "batch_of": [0] * 60,
            "costs": [3] * 60,
            "refused": set(),
            "leaves": set(),
            "shards": [None],
            "limits": [None],
        },
    )
    inv.reserve(inv.jobs[:10])
    inv.run(list(range(60)))
    assert [ok for _, ok in inv.services.commits] == [True, True]
    check(inv)


def test_two_messages_of_one_job_among_sixty_send_every_job_alone(fresh: Any) -> None:
    """A job's second message in a 60-job invocation: two parts for one item, no group
    transaction; each job commits on its own, the job once, the marker closed at the end."""
    services = fresh()
    inv = build(
        services,
        {
            "batch_of": [0] * 60,
            "costs": [5] * 60,
            "refused": set(),
            "leaves": set(),
            "shards": [1],
            "limits": [None],
        },
    )
    inv.reserve(inv.jobs)
    twin = Job("j007", "b0", 5, held=inv.jobs[7].held)
    inv.jobs.append(twin)
    inv.finals = Finals(services, [f"m{i}" for i in range(61)])  # type: ignore[arg-type]
    assert inv.marker is not None
    inv.finals.cover(inv.marker, [j.key for j in inv.jobs[:60]])

    async def arrive(message: str, job: Job) -> bool:
        committed = await inv.finals.commit(message, inv.final(job))
        assert not committed
        assert job.held is not None
        mine = services.batches.transition(
            job.batch,
            job.custom_id,
            prev=JobState.new,
            new=JobState.succeeded,
            counters={"cost_nanos": job.cost},
            extra=services.budget.settle_items(job.held, job.cost),
            shard=1,
        )
        await inv.finals.settled(message, mine)
        return mine

    async def everything() -> list[bool]:
        won = await asyncio.gather(*(arrive(f"m{i}", j) for i, j in enumerate(inv.jobs)))
        await inv.finals.end([])
        return list(won)

    won = asyncio.run(everything())
    assert services.commits == [], "no group transaction tried"
    assert won.count(False) == 1 and won[7] != won[60], "one of the two messages wins"
    assert counters(services, "b0") == {"succeeded": 60, "cost_nanos": 300}
    day = inv.jobs[0].held.day  # type: ignore[union-attr]
    assert round(services.budget.usage(day).spent_usd * 10**9) == 300
    assert open_markers(services, day) == {}


def test_a_crash_between_two_group_transactions_leaves_the_rest_to_reclaim(
    fresh: Any, config: Config
) -> None:
    """The instance dies after the first of two transactions committed: its jobs are
    settled, the others untouched, and the marker stays (it names open reservations), so
    ``reclaim`` gives those back after their deadline and then deletes it."""
    services = fresh()
    inv = build(
        services,
        {
            "batch_of": [0] * 60,
            "costs": [9] * 60,
            "refused": set(),
            "leaves": set(),
            "shards": [None],
            "limits": [None],
        },
    )
    inv.reserve(inv.jobs)
    services.crash_on = 1
    with pytest.raises(WorkerCrash):
        inv.run(list(range(60)), alone=False)
    first = [j for j in inv.jobs if j.outcome]
    rest = [j for j in inv.jobs if not j.outcome]
    assert first and rest and services.commits == [(len(first) * 2 + 2, True)]
    day = inv.jobs[0].held.day  # type: ignore[union-attr]
    markers = open_markers(services, day)
    assert list(markers.values()) == [[j.key for j in inv.jobs]], "the marker stays"
    ((marker, named),) = markers.items()
    still = {r.job_key for r, _ in services.budget.open_in_group(marker, named)}
    assert still == {j.key for j in rest}, "it names the open reservations: reclaim finds them"
    assert all(reservation(services, j.key)["state"] == "reserved" for j in rest)
    later = Budget(
        services.dynamo.client,
        services.dynamo.table,
        config,
        clock=lambda: time.time() + config.budget.reservation_ttl_s + 1,
    )
    assert later.reclaim(day) == len(rest)
    assert open_markers(services, day) == {}
    usage = services.budget.usage(day)
    assert (round(usage.spent_usd * 10**9), usage.reserved_usd) == (9 * len(first), 0)
    assert counters(services, "b0") == {"succeeded": len(first), "cost_nanos": 9 * len(first)}


@pytest.mark.parametrize(
    ("jobs", "limited", "together"),
    [(97, 0, 97), (98, 0, 98), (99, 0, 98), (100, 0, 98), (100, 1, 97), (60, 40, 58), (80, 80, 49)],
)
def test_reserve_many_takes_the_longest_prefix_one_transaction_holds(
    fresh: Any, jobs: int, limited: int, together: int
) -> None:
    """Exactly 97..100 jobs, or many limited batches (one ledger each, in the count): the
    prefix that fits, in one transaction within 100 items, each limited batch charged its
    own jobs' sum."""
    services = fresh()
    sizes: list[int] = []
    real = services.dynamo.client.transact_write_items

    def counted(**kwargs: Any) -> Any:
        sizes.append(len(kwargs["TransactItems"]))
        return real(**kwargs)

    services.budget._ddb.transact_write_items = counted  # type: ignore[attr-defined]
    asks = [
        Ask(f"b{i}#j{i:03}", WORST, f"b{i}", 10**9 if i < limited else None, f"j{i}")
        for i in range(jobs)
    ]
    held = services.budget.reserve_many(asks)
    assert list(held) == [a.job_key for a in asks[:together]]
    assert sizes == [together + 2 + min(limited, together)], "jobs, marker, day, batches"
    assert sizes[0] <= MAX_TRANSACT_ITEMS
    day = next(iter(held.values())).day
    assert round(services.budget.usage(day).reserved_usd * 10**9) == WORST * together
    for i in range(min(limited, together)):  # each limited batch charged its own job
        item = services.dynamo.client.get_item(
            TableName=services.dynamo.table, Key=batch_ledger_key(f"b{i}"), ConsistentRead=True
        )["Item"]
        assert int(item["committed"]["N"]) == WORST


@pytest.mark.parametrize(("twin", "reserved"), [(5, 0), (98, 98)])
def test_reserve_many_with_a_job_twice(fresh: Any, twin: int, reserved: int) -> None:
    """A job asked twice within the prefix: nothing together (each alone sorts it out);
    its second ask past the prefix: the prefix is reserved, the twin is left out."""
    services = fresh()
    asks = [Ask(f"b#j{i:03}", WORST, "b", None, f"j{i}") for i in range(110)]
    asks.insert(twin, asks[0])
    held = services.budget.reserve_many(asks)
    assert len(held) == reserved
    assert all(a.job_key in held for a in asks[:reserved])


def test_a_transaction_that_committed_but_raised_keeps_its_jobs_lines(fresh: Any) -> None:
    """The group's transaction reaches DynamoDB, its reply does not (botocore gave up):
    each job then makes its own, finds itself ``succeeded`` and loses (``_move`` stops
    there); the lines its state points to must stay in the objects."""
    services = fresh()
    inv = build(
        services,
        {
            "batch_of": [0] * 4,
            "costs": [5] * 4,
            "refused": set(),
            "leaves": set(),
            "shards": [None],
            "limits": [None],
        },
    )
    inv.reserve(inv.jobs)
    real = services.batches.commit

    def lost_reply(items: Any) -> bool:
        assert real(items)
        raise TimeoutError("read timeout: the reply never came")

    services.batches.commit = lost_reply  # type: ignore[method-assign]

    async def arrive(job: Job) -> None:
        part = inv.final(job, inv.finals.place(job.key))
        part.lines = lines(job.custom_id, job.cost)
        assert not await inv.finals.commit(job.custom_id, part)
        # its own transaction met the job succeeded and lost; yet it committed (the group's)
        assert await inv.finals.settled(job.custom_id, False)

    async def everything() -> None:
        await asyncio.gather(*(arrive(j) for j in inv.jobs))

    asyncio.run(everything())
    states = services.batches.jobs("b0", [j.custom_id for j in inv.jobs])
    assert {s.state for s in states} == {JobState.succeeded}
    kept = {key: len(found) for key, found in services.store.lines.items()}
    assert all(count == 4 for count in kept.values()), f"lines left per object: {kept}"
