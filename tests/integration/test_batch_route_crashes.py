"""The gatherer killed between any two of its writes (issue 17: "a crash of the scheduled
function at each step"), through the local runtime: the next scheduled runs finish the
work, and each provider batch is created once, each job answered once, each cost counted
once, no reservation left holding money, no job lost.

The file: ``JOBS`` batch-routed jobs on gpt-4.1, one of which the API refuses (its line
gets a 400: ``failed``), in one provider batch that expires part-way (the lines not
answered by then go back to the synchronous path), ingested ``CHUNK`` jobs per
transaction, so every ingest step (objects, error records, re-sends, the transaction,
between chunks) has work to crash in. A crash point is hit by the test's hook
(``batchroute/crash.py``) the first ``times`` times it is reached; the local schedule
takes the ``WorkerCrash`` as a Lambda that died and runs the gatherer again at its next
period.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest

from bench._common import read_jsonl
from chatbatch.batchroute import crash, ingest
from chatbatch.batchroute.gather import PART_METADATA
from chatbatch.core.config import Model
from chatbatch.core.pricing import Usage, cost, from_nanos
from chatbatch.local.options import LocalOptions
from chatbatch.local.runtime import LOCAL_KEY, LocalRuntime
from chatbatch.local.simulator import SimulatorSettings
from chatbatch.local.simulator.stats import Stats
from chatbatch.local.summary import Summary
from chatbatch.state.batches import BatchInfo
from chatbatch.state.budget.budget import Budget
from chatbatch.state.budget.ledger import RESERVATION_PREFIX, DayUsage
from chatbatch.state.parts import Part, Parts, PartState
from tests.integration import test_batch_route as route_tests
from tests.integration.test_batch_route import MODEL, job, priced, write

pytestmark = pytest.mark.slow

JOBS = 12
REFUSED = "job-5"  # the API's 400 for its line (``failed``)
CHUNK = 4  # jobs per ingest transaction: three chunks
OPEN_PREFIX = "budget#open#"  # the open markers' partitions (``ledger.open_key``)
VISIBILITY_S = 3  # the batch queue's, here: a crashed gather's messages come back soon
# Left after a gather died past its reservations, the messages come back while the part is
# anywhere from ``creating`` to ``done``: with lines sent back to the synchronous path that
# is the race ``test_a_late_copy_of_a_sent_back_jobs_message_is_not_gathered_again`` pins;
# those scenarios run a batch that does not expire, so they check the rest of the books.
MESSAGES_LEFT = "gather_after_reserve"

# a crash point and the crashes before it that lead a run there (recover runs only on a
# part a crash left ``creating``)
SCENARIOS: list[tuple[str, ...]] = [
    *((point,) for point in crash.GATHER_POINTS + crash.INGEST_POINTS),
    (MESSAGES_LEFT, "recover_after_find"),
    ("gather_after_delete", "recover_after_find"),
    (MESSAGES_LEFT, "after_provider_create"),  # the create recover makes
]


class Crashes:
    """The hook: dies at each of ``points`` the first ``times`` times it is reached."""

    def __init__(self, points: tuple[str, ...], times: int) -> None:
        self.points = points
        self.times = times
        self.hits: Counter[str] = Counter()
        self.died: Counter[str] = Counter()

    def __call__(self, name: str) -> bool:
        if name not in self.points:
            return False
        self.hits[name] += 1
        if self.hits[name] > self.times:
            return False
        self.died[name] += 1
        return True


@pytest.fixture
def crashes(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Crashes]:
    points, times = request.param
    hook = Crashes(points, times)
    monkeypatch.setattr(ingest, "CHUNK_JOBS", CHUNK)
    monkeypatch.setattr(crash, "crash_hook", hook)
    yield hook


def lines() -> list[dict[str, Any]]:
    out = [job(i, batch=True) for i in range(JOBS)]
    # a tool message answering no call: chatbatch takes the line, the API refuses it
    out[int(REFUSED.split("-")[1])]["body"]["messages"].append(
        {"role": "tool", "tool_call_id": "call_none", "content": "?"}
    )
    return out


def provider_batches(rt: LocalRuntime) -> list[dict[str, Any]]:
    """Every batch the simulator's OpenAI Batch API was asked to create."""
    assert rt.simulator is not None
    reply = httpx.get(
        f"{rt.simulator.base_url}/batches",
        params={"limit": 100},
        headers={"Authorization": f"Bearer {LOCAL_KEY}"},
    )
    reply.raise_for_status()
    page = reply.json()
    assert not page["has_more"]
    return list(page["data"])


def money_held(rt: LocalRuntime) -> list[dict[str, Any]]:
    """Reservations still ``reserved`` (a settled one stays, so a copy finds it paid) and
    open markers (a reservation's, a group's) left on the table."""
    items = boto3.client("dynamodb").scan(TableName=rt.resources.table)["Items"]
    return [
        i
        for i in items
        if (i["pk"]["S"].startswith(RESERVATION_PREFIX) and i["state"]["S"] != "settled")
        or i["pk"]["S"].startswith(OPEN_PREFIX)
    ]


def parts_closed(rt: LocalRuntime, within_s: float = 20.0) -> list[Part]:
    """Every part's record once none is left to close (or as it is ``within_s`` on): the
    run ends when its jobs are final, a part's money is closed at the gatherer's next run
    after its last chunk (sooner when nothing crashed in between)."""
    parts = Parts(boto3.client("dynamodb"), rt.resources.table, rt.batches)
    deadline = time.monotonic() + within_s
    while True:
        records = list(parts.listed())
        if all(p.state is PartState.done for p in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


@dataclass
class Books:
    """What a run left: its outputs, the simulator's bill and the table's state."""

    summary: Summary
    out: Path
    stats: Stats
    created: list[dict[str, Any]]  # the provider batches
    parts: list[Part]
    usage: DayUsage
    info: BatchInfo | None
    held: list[dict[str, Any]]  # reservations and open markers left
    model: Model


def run_file(
    tmp_path: Path, *, expires: bool, visibility_s: int = VISIBILITY_S, latency_ms: float = 0
) -> Books:
    """The file through the local runtime (the batch expiring part-way if ``expires``;
    each synchronous call answered after ``latency_ms``), then every part closed."""
    path = write(tmp_path, lines())
    out = tmp_path / "out"
    expire_s = 1.0 if expires else 3600.0
    sim = SimulatorSettings(
        batch_turnaround_s=2.0, batch_expire_after_s=expire_s, latency_ms=latency_ms
    )
    with LocalRuntime(LocalOptions(timeout_s=120, gather_every_s=1.0, simulator=sim)) as rt:
        assert rt.simulator is not None and rt.resources.batch_queue
        boto3.client("sqs").set_queue_attributes(
            QueueUrl=rt.resources.batch_queue,
            Attributes={"VisibilityTimeout": str(visibility_s)},
        )
        summary = rt.run(path, out)
        parts = parts_closed(rt)
        return Books(
            summary=summary,
            out=out,
            stats=rt.simulator.stats(),
            created=provider_batches(rt),
            parts=parts,
            usage=Budget(boto3.client("dynamodb"), rt.resources.table, rt.config).usage(),
            info=rt.batches.get(summary.batch_id),
            held=money_held(rt),
            model=next(m for m in rt.config.models.values() if m.model_id == MODEL),
        )


def assert_books(books: Books, expired: bool) -> None:
    """Every promise of the brief, on what the run left."""
    # each provider batch created once: one per part that reached its provider, each
    # job in one of them (a dead run's messages may come back a few at a time: then
    # more than one part holds the file, each its own jobs)
    named = Counter(b["metadata"].get(PART_METADATA) for b in books.created)
    opened = {p.part_id: p for p in books.parts if p.provider_batch_id}
    assert set(named) == set(opened) and set(named.values()) == {1}, (named, books.parts)
    assert {b["id"] for b in books.created} == {p.provider_batch_id for p in opened.values()}
    assert sum(p.jobs for p in opened.values()) == JOBS, books.parts
    assert all(p.state is PartState.done for p in books.parts), books.parts

    # each job answered in the results, its own answer; the refused one its 400
    summary = books.summary
    assert summary.succeeded == JOBS - 1 and summary.failed == 1, summary
    results = read_jsonl(books.out / "results.jsonl")
    assert sorted(r["custom_id"] for r in results) == sorted(f"job-{i}" for i in range(JOBS))
    answered = [r for r in results if r["custom_id"] != REFUSED]
    for r in answered:
        i = r["custom_id"].split("-")[1]
        content = r["response"]["body"]["choices"][0]["message"]["content"]
        assert f"word{i} " in content + " ", r
    [refused] = [r for r in results if r["custom_id"] == REFUSED]
    assert refused["response"]["status_code"] == 400, refused

    # each cost counted once, at its route's prices, and the books equal to the bill (a
    # job run twice is billed twice: the bill would pass the records)
    model, stats = books.model, books.stats
    costs = read_jsonl(books.out / "costs.jsonl")
    assert sorted(c["custom_id"] for c in costs) == sorted(r["custom_id"] for r in answered)
    for record in costs:
        usage = Usage(
            prompt_tokens=record["prompt_tokens"],
            cached_tokens=record["cached_tokens"],
            completion_tokens=record["completion_tokens"],
        )
        prices = model if record["route"] == "sync" else model.batch_priced()
        assert Decimal(record["cost_usd"]) == cost(usage, prices), record
    routes = Counter(c["route"] for c in costs)
    assert bool(routes["sync"]) == expired and routes["batch"], routes
    assert routes["batch"] == stats.batch_billed_by_model[MODEL].calls
    sync_bill = stats.billed_by_model.get(MODEL)
    assert routes["sync"] == (sync_bill.calls if sync_bill else 0)
    billed = priced(stats.batch_billed_by_model[MODEL].model_dump(), model.batch_priced())
    if sync_bill is not None:
        billed += priced(sync_bill.model_dump(), model)
    assert sum(Decimal(c["cost_usd"]) for c in costs) == billed
    assert books.usage.spent_usd == billed
    info = books.info
    assert info is not None
    assert (info.succeeded, info.failed, info.batched) == (JOBS - 1, 1, 0), info
    assert from_nanos(info.cost_nanos) == billed

    # no reservation left holding money: the day's committed back to what settled
    assert books.usage.reserved_usd == 0, books.usage
    assert books.held == [], books.held


# dying twice in a row at the same point: where a repeat meets the first one's leftovers
# (its messages back, its provider batch made, its sends made, a chunk committed)
TWICE = {MESSAGES_LEFT, "after_provider_create", "ingest_after_sends", "ingest_after_transaction"}


def scenario_ids(ingest: bool) -> Iterator[Any]:
    """The scenarios whose last point is in the ingest (``ingest``) or not: two modules,
    so that the two halves of the matrix run side by side (``make test``: loadfile)."""
    for points in SCENARIOS:
        if (points[-1] in crash.INGEST_POINTS) != ingest:
            continue
        for times in (1, 2) if points[-1] in TWICE else (1,):
            yield pytest.param((points, times), id=f"{'+'.join(points)}-x{times}")


@pytest.mark.parametrize("crashes", list(scenario_ids(ingest=False)), indirect=True)
def test_a_gatherer_killed_between_two_writes_loses_nothing_and_counts_nothing_twice(
    tmp_path: Path, crashes: Crashes
) -> None:
    expires = MESSAGES_LEFT not in crashes.points
    books = run_file(tmp_path, expires=expires)
    assert crashes.died[crashes.points[-1]] >= 1, f"the crash point was never reached: {crashes}"
    assert_books(books, expired=expires)


@pytest.mark.parametrize("crashes", [((MESSAGES_LEFT,), 1)], indirect=True)
def test_a_late_copy_of_a_sent_back_jobs_message_is_not_gathered_again(
    tmp_path: Path, crashes: Crashes
) -> None:
    """A gather dies after its part's reservations, before deleting the messages. The next
    run recovers the part and opens it; its batch ends, expired part-way, and those lines
    go back to the synchronous path (each ``new`` again, its own message on its
    priority's queue, where it may wait for hours behind others: here its call takes
    ``latency_ms``); then the old messages come back to the batch queue (their visibility
    timeout: ``GATHER_TIMEOUT_S`` and a minute, deployed; a provider batch may end
    sooner). They must not send those jobs through a provider batch again. (Any late copy
    of a batch-queue message does the same: an SQS duplicate.)"""
    visibility_s = 6  # the part recovered, ended and ingested before; the calls in flight
    books = run_file(tmp_path, expires=True, visibility_s=visibility_s, latency_ms=9000)
    assert crashes.died[MESSAGES_LEFT] == 1
    assert_books(books, expired=True)


@pytest.mark.parametrize("point", ["give_up_after_sends", "give_up_after_close"])
def test_a_gatherer_killed_while_giving_a_part_up_still_runs_each_job_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, point: str
) -> None:
    """The part the provider never takes, given up after an hour (``recover.give_up``),
    with the run dying there once: the next run finishes it, every promise of that test
    kept (each job run once, synchronously; the money back; the record done)."""
    hook = Crashes((point,), 1)
    monkeypatch.setattr(crash, "crash_hook", hook)
    given_up = route_tests.test_a_part_the_provider_never_takes_goes_to_sync_after_an_hour
    given_up(tmp_path, monkeypatch)
    assert hook.died[point] == 1
