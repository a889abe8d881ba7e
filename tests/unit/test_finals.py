"""The group commit of an invocation's final transactions (``worker/finals.py``), on moto.

Jobs settle together once every job of the invocation has arrived or left: one
transaction, one write per ledger and per batch for their sums. All or nothing: a refused
condition writes nothing and sends every job to its own transaction; so do two parts for
one item (two messages of one job), and a job alone. Before it, the jobs' lines go into
the invocation's flush objects, one write each; the lines of a job whose own transaction
lost leave them again.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from chatbatch.core.config import Config, Priority
from chatbatch.core.output_lines import CostRecord, OutputLine
from chatbatch.state.batches import Batches, JobState
from chatbatch.state.budget.budget import Budget
from chatbatch.state.budget.reservations import Ask, Reservation
from chatbatch.state.store import flush_cost_key, flush_result_key
from chatbatch.worker.finals import Final, Finals, Lines
from tests.unit.conftest import Dynamo

BATCH = "group"


class Objects:
    """What ``Finals`` writes to S3: each object's lines by key."""

    def __init__(self) -> None:
        self.lines: dict[str, list[str]] = {}
        self.puts = 0

    def put_lines(self, key: str, lines: list[str]) -> None:
        self.lines[key] = list(lines)
        self.puts += 1


class Services:
    """What ``Finals`` uses of a worker's services, on moto; counts the commits."""

    def __init__(self, dynamo: Dynamo, config: Config) -> None:
        self.store = Objects()
        self.batches = Batches(dynamo.client, dynamo.table)
        self.budget = Budget(dynamo.client, dynamo.table, config)
        self.commits: list[bool] = []
        real = self.batches.commit

        def counted(items: Any) -> bool:
            self.commits.append(real(items))
            return self.commits[-1]

        self.batches.commit = counted  # type: ignore[method-assign]


def final(services: Services, custom_id: str, r: Reservation, cost: int) -> Final:
    move, deltas = services.batches.move(
        BATCH, custom_id, JobState.new, JobState.succeeded, {"cost_nanos": cost}
    )
    own, ledgers = services.budget.settle_parts(r, cost)
    return Final(
        job=f"{BATCH}#{custom_id}",
        batch_id=BATCH,
        own=[move, *own],
        ledgers=ledgers,
        counters=deltas,
    )


def lines(custom_id: str, cost: int) -> Lines:
    """A job's result (here an error line: any ``OutputLine`` will do) and cost record."""
    record = CostRecord(
        ts="2026-12-02T00:00:00.000+00:00",
        dt="2026-12-02",
        batch_id=BATCH,
        custom_id=custom_id,
        priority=Priority.normal,
        model="m",
        model_id="m-1",
        provider="p",
        prompt_tokens=1,
        cached_tokens=0,
        completion_tokens=1,
        reasoning_tokens=0,
        cost_nanos=cost,
        cost_usd=cost / 10**9,
    )
    return Lines(OutputLine.failure(BATCH, custom_id, "x", "an answer"), record)


def reserve(services: Services, custom_id: str) -> Reservation:
    return services.budget.reserve(f"{BATCH}#{custom_id}", 1_000, owner=custom_id)


def run(*steps: Callable[[], Awaitable[Any]]) -> list[Any]:
    async def together() -> list[Any]:
        return list(await asyncio.gather(*(step() for step in steps)))

    return asyncio.run(together())


@pytest.fixture
def services(dynamo: Dynamo, config: Config) -> Services:
    return Services(dynamo, config)


def test_jobs_settle_in_one_transaction_once_every_job_arrived_or_left(services: Services):
    ids = ["a", "b", "c", "gone"]
    held = {i: reserve(services, i) for i in ids[:3]}
    finals = Finals(services, ids)  # type: ignore[arg-type]

    async def arrive(i: str, cost: int) -> bool:
        await asyncio.sleep(0.01 * cost)  # in turn: the last to come commits for all
        return await finals.commit(i, final(services, i, held[i], cost))

    async def leave() -> None:
        await asyncio.sleep(0.05)
        finals.leave("gone")

    settled = run(lambda: arrive("a", 1), lambda: arrive("b", 2), lambda: arrive("c", 3), leave)
    assert settled[:3] == [True, True, True]
    assert services.commits == [True], "one transaction for the three"
    info = services.batches.get(BATCH)
    assert info is not None and (info.succeeded, info.cost_nanos) == (3, 6)
    usage = services.budget.usage(held["a"].day)
    assert (usage.spent_usd * 10**9, usage.reserved_usd) == (6, 0)


def test_a_refused_condition_writes_nothing_and_each_job_settles_alone(services: Services):
    held = {i: reserve(services, i) for i in ("a", "b")}
    # another copy ended "b" since this invocation read it
    assert services.batches.transition(BATCH, "b", prev=JobState.new, new=JobState.failed)
    finals = Finals(services, ["a", "b"])  # type: ignore[arg-type]
    settled = run(
        lambda: finals.commit("a", final(services, "a", held["a"], 5)),
        lambda: finals.commit("b", final(services, "b", held["b"], 7)),
    )
    assert settled == [False, False] and services.commits == [False]
    info = services.batches.get(BATCH)
    assert info is not None and (info.succeeded, info.failed, info.cost_nanos) == (0, 1, 0)
    usage = services.budget.usage(held["a"].day)
    assert usage.spent_usd == 0 and usage.reserved_usd > 0, "nothing settled"


def test_two_parts_for_one_item_or_a_job_alone_make_no_group(services: Services):
    r = reserve(services, "a")
    twice = Finals(services, ["m1", "m2"])  # type: ignore[arg-type]
    settled = run(
        lambda: twice.commit("m1", final(services, "a", r, 5)),
        lambda: twice.commit("m2", final(services, "a", r, 5)),
    )
    alone = Finals(services, ["m3"])  # type: ignore[arg-type]
    settled += run(lambda: alone.commit("m3", final(services, "a", r, 5)))
    assert settled == [False, False, False]
    assert services.commits == [], "no transaction tried"


def markers(dynamo: Dynamo, day: str) -> int:
    reply = dynamo.client.query(
        TableName=dynamo.table,
        KeyConditionExpression="pk = :pk",
        ExpressionAttributeValues={":pk": {"S": f"budget#open#{day}"}},
    )
    return len(reply["Items"])


def reserve_group(services: Services, finals: Finals, ids: list[str]) -> dict[str, Reservation]:
    held = services.budget.reserve_many([Ask(f"{BATCH}#{i}", 1_000, owner=i) for i in ids])
    first = next(iter(held.values()))
    assert first.marker is not None
    finals.cover(first.marker_at(), held)
    return {i: held[f"{BATCH}#{i}"] for i in ids}


def test_the_group_commit_closes_the_marker_of_the_jobs_reserved_together(
    services: Services, dynamo: Dynamo
):
    finals = Finals(services, ["a", "b"])  # type: ignore[arg-type]
    held = reserve_group(services, finals, ["a", "b"])
    day = held["a"].day
    assert markers(dynamo, day) == 1
    run(
        lambda: finals.commit("a", final(services, "a", held["a"], 1)),
        lambda: finals.commit("b", final(services, "b", held["b"], 2)),
    )
    assert services.commits == [True] and markers(dynamo, day) == 0
    run(lambda: finals.end([]))  # nothing left to close
    assert services.budget.usage(day).reserved_usd == 0


@pytest.mark.parametrize("b_open", [False, True])
def test_the_end_closes_the_marker_unless_a_reservation_it_names_is_open(
    services: Services, dynamo: Dynamo, b_open: bool
):
    """ "a" settles alone, "b" ended another way (its reservation closed), or left it open
    (handed back keeping it, or raised), "c" was never used: "c" goes back; the marker
    goes, unless "b"'s reservation is still open."""
    finals = Finals(services, ["a", "b", "c"])  # type: ignore[arg-type]
    held = reserve_group(services, finals, ["a", "b", "c"])
    day = held["a"].day
    if not b_open:
        assert services.budget.settle(held["b"], 0)
    settled = run(
        lambda: finals.commit("a", final(services, "a", held["a"], 1)),
        lambda: _leave(finals, "b"),
        lambda: _leave(finals, "c"),
    )
    assert settled[0] is False and services.commits == []  # alone: its own transaction
    assert services.budget.settle(held["a"], 1)
    run(lambda: finals.end([held["c"]]))
    assert markers(dynamo, day) == (1 if b_open else 0)
    usage = services.budget.usage(day)
    assert usage.reserved_usd * 10**9 == (1_000 if b_open else 0)


async def _leave(finals: Finals, job: str) -> None:
    await asyncio.sleep(0.01)
    finals.leave(job)


def test_the_lines_of_a_job_whose_own_transaction_lost_leave_the_objects(services: Services):
    """The group's objects are written once, with both jobs' lines, before its transaction
    (refused: another copy ended "b"); "a" commits alone, "b" loses: the objects are
    written again without "b"'s lines, and "a"'s line names the flush its state holds."""
    held = {i: reserve(services, i) for i in ("a", "b")}
    assert services.batches.transition(BATCH, "b", prev=JobState.new, new=JobState.failed)
    finals = Finals(services, ["a", "b"])  # type: ignore[arg-type]

    async def arrive(i: str, cost: int) -> bool:
        part = final(services, i, held[i], cost)
        part.flush, part.lines = finals.place(part.job), lines(i, cost)
        committed = await finals.commit(i, part)
        assert not committed, "the group's transaction is refused"
        mine = services.batches.transition(
            BATCH, i, prev=JobState.new, new=JobState.succeeded, extra=[], fields={}
        )
        await finals.settled(i, mine)
        return mine

    assert run(lambda: arrive("a", 5), lambda: arrive("b", 7)) == [True, False]
    results, costs = (
        flush_result_key(BATCH, finals.flush),
        flush_cost_key("2026-12-02", BATCH, finals.flush),
    )
    assert set(services.store.lines) == {results, costs}
    assert services.store.puts == 4, "each object written once, then once more without b"
    for key in (results, costs):
        assert [json.loads(line)["custom_id"] for line in services.store.lines[key]] == ["a"]


def test_two_messages_of_one_job_put_their_lines_in_two_flushes(services: Services):
    """An object holds one line per job: a second message of the job in the same
    invocation gets a flush of its own."""
    finals = Finals(services, ["m1", "m2"])  # type: ignore[arg-type]
    first, second = finals.place(f"{BATCH}#a"), finals.place(f"{BATCH}#a")
    assert first == finals.flush and second != first
    assert finals.place(f"{BATCH}#b") == finals.flush


def test_a_job_alone_that_lost_leaves_its_objects_empty(services: Services):
    """A job alone writes its objects too; when its own transaction loses they are
    written again with no line (a worker puts objects, it may not delete them)."""
    held = reserve(services, "b")
    assert services.batches.transition(BATCH, "b", prev=JobState.new, new=JobState.failed)
    finals = Finals(services, ["b"])  # type: ignore[arg-type]

    async def arrive() -> None:
        part = final(services, "b", held, 7)
        part.flush, part.lines = finals.place(part.job), lines("b", 7)
        assert not await finals.commit("b", part)
        await finals.settled("b", False)

    run(arrive)
    assert services.store.puts == 4 and services.commits == []
    assert all(not kept for kept in services.store.lines.values())


def test_more_jobs_than_one_transaction_holds_commit_in_several(services: Services, dynamo: Dynamo):
    """70 jobs have 140 items of their own: two transactions within DynamoDB's 100 items,
    the marker of their reservation deleted by the one that completes it."""
    ids = [f"j{i:02}" for i in range(70)]
    finals = Finals(services, ids)  # type: ignore[arg-type]
    held = reserve_group(services, finals, ids)
    day = held[ids[0]].day
    settled = run(*(lambda i=i: finals.commit(i, final(services, i, held[i], 1)) for i in ids))
    assert settled == [True] * 70
    assert services.commits == [True, True]
    info = services.batches.get(BATCH)
    assert info is not None and (info.succeeded, info.cost_nanos) == (70, 70)
    usage = services.budget.usage(day)
    assert (usage.spent_usd * 10**9, usage.reserved_usd) == (70, 0)
    assert markers(dynamo, day) == 0


def test_a_refused_part_of_a_large_group_settles_alone_and_the_rest_commits(
    services: Services, dynamo: Dynamo
):
    ids = [f"j{i:02}" for i in range(70)]
    finals = Finals(services, ids)  # type: ignore[arg-type]
    held = reserve_group(services, finals, ids)
    day = held[ids[0]].day
    # another copy ended the first job since this invocation read it
    assert services.batches.transition(BATCH, ids[0], prev=JobState.new, new=JobState.failed)
    settled = run(*(lambda i=i: finals.commit(i, final(services, i, held[i], 1)) for i in ids))
    assert services.commits == [False, True]
    refused = settled.count(False)
    assert 0 < refused < 70 and settled[0] is False
    info = services.batches.get(BATCH)
    assert info is not None and (info.succeeded, info.failed) == (70 - refused, 1)
    assert info.cost_nanos == 70 - refused
    assert markers(dynamo, day) == 1, "jobs of the marker are still open: end or reclaim"


def test_reserving_more_jobs_than_one_transaction_holds_takes_the_first(services: Services):
    asks = [Ask(f"{BATCH}#j{i:03}", 1_000, owner=f"j{i:03}") for i in range(120)]
    held = services.budget.reserve_many(asks)
    assert list(held) == [a.job_key for a in asks[:98]], "98 jobs, the marker and the ledger"
    day = next(iter(held.values())).day
    assert services.budget.usage(day).reserved_usd * 10**9 == pytest.approx(98_000)
