"""The batch route's parts (``state/parts.py``): each job moved into one part once, in
chunks of DynamoDB's item limit; a stale job left out; a crash between chunks leaves a
``creating`` record naming exactly the jobs moved; the record's states advance once."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from chatbatch.core.config import Config
from chatbatch.core.resources import TABLE_TTL
from chatbatch.local.aws import create_resources, moto_in_process
from chatbatch.state.batches import Batches, JobState
from chatbatch.state.parts import DONE_KEEP_S, JobIn, Part, PartExists, Parts, PartState, part_key

_ids = itertools.count()


@pytest.fixture
def stores(config: Config) -> Iterator[tuple[Parts, Batches]]:
    with moto_in_process():
        table = create_resources(config).table
        ddb = boto3.client("dynamodb")
        batches = Batches(ddb, table)
        yield Parts(ddb, table, batches), batches


def states(batches: Batches, batch_id: str, ids: list[str]) -> dict[str, tuple[JobState, str]]:
    """Each job's state and the part its item names ("" for none)."""
    records = {r.custom_id: r for r in batches.jobs(batch_id, ids)}
    return {cid: (records[cid].state, records[cid].part or "") for cid in ids}


def a_part(**fields: Any) -> Part:
    return Part(part_id=f"p{next(_ids)}", model="gpt-4.1", api="openai", **fields)


def test_a_part_of_230_jobs_moves_each_once_in_chunks(stores: tuple[Parts, Batches]) -> None:
    parts, batches = stores
    jobs = [JobIn(batch_id="b1" if i % 2 else "b2", custom_id=f"j{i}") for i in range(230)]
    part = a_part()
    assert parts.create(part, jobs) == []
    got = parts.get(part.part_id)
    assert got is not None and (got.state, got.jobs) == (PartState.creating, 230)
    assert got.batches == ["b1", "b2"], "where the part's money is"

    for batch_id in ("b1", "b2"):
        ids = [j.custom_id for j in jobs if j.batch_id == batch_id]
        assert set(states(batches, batch_id, ids).values()) == {(JobState.batched, part.part_id)}
        info = batches.get(batch_id)
        assert info is not None and info.batched == 115 and info.waiting == 115
    # the same jobs again, as read before: none moves into a second part
    other = a_part()
    assert len(parts.create(other, jobs)) == 230
    assert parts.get(other.part_id).jobs == 0  # type: ignore[union-attr]
    with pytest.raises(PartExists):
        parts.create(part, [])


def test_a_stale_job_is_left_out_and_its_chunk_goes_on(stores: tuple[Parts, Batches]) -> None:
    """One job of a chunk ended meanwhile (another delivery): the chunk is refused, its other
    jobs move one by one, the ended one is returned and keeps its state."""
    parts, batches = stores
    jobs = [JobIn(batch_id="b", custom_id=f"s{i}") for i in range(60)]
    assert batches.transition("b", "s7", prev=JobState.new, new=JobState.succeeded)
    part = a_part()
    left = parts.create(part, jobs)
    assert [j.custom_id for j in left] == ["s7"]
    found = states(batches, "b", [j.custom_id for j in jobs])
    assert found.pop("s7") == (JobState.succeeded, "")
    assert set(found.values()) == {(JobState.batched, part.part_id)}
    assert parts.get(part.part_id).jobs == 59  # type: ignore[union-attr]
    info = batches.get("b")
    assert info is not None and (info.batched, info.succeeded) == (59, 1)


def test_a_crash_between_chunks_leaves_the_moved_jobs_in_the_creating_part(
    stores: tuple[Parts, Batches], monkeypatch: pytest.MonkeyPatch
) -> None:
    parts, batches = stores
    jobs = [JobIn(batch_id="c", custom_id=f"c{i}") for i in range(150)]
    real = Parts._move
    calls = itertools.count()

    def dies_at_the_second(self: Parts, part_id: str, chunk: Any) -> bool:
        if next(calls) == 1:
            raise RuntimeError("the gatherer's run timed out")
        return real(self, part_id, chunk)

    monkeypatch.setattr(Parts, "_move", dies_at_the_second)
    part = a_part()
    with pytest.raises(RuntimeError):
        parts.create(part, jobs)
    got = parts.get(part.part_id)
    assert got is not None and got.state is PartState.creating
    found = states(batches, "c", [j.custom_id for j in jobs])
    moved = [cid for cid, (state, _) in found.items() if state is JobState.batched]
    assert got.jobs == len(moved) == 49
    assert {found[cid][1] for cid in moved} == {part.part_id}
    assert batches.get("c").batched == 49  # type: ignore[union-attr]


def test_a_part_advances_once_and_a_closed_one_takes_no_jobs(
    stores: tuple[Parts, Batches],
) -> None:
    parts, _ = stores
    part = a_part()
    parts.create(part, [JobIn(batch_id="d", custom_id="d0")])
    assert parts.opened(part.part_id, "batch_abc")
    assert not parts.opened(part.part_id, "batch_other"), "one provider batch per part"
    assert parts.advance(part.part_id, PartState.open, PartState.ingesting)
    assert not parts.advance(part.part_id, PartState.open, PartState.ingesting)
    got = parts.get(part.part_id)
    assert got is not None and (got.state, got.provider_batch_id) == (
        PartState.ingesting,
        "batch_abc",
    )
    listed = {p.part_id for p in parts.listed(PartState.ingesting)}
    assert part.part_id in listed
    assert part.part_id not in {p.part_id for p in parts.listed(PartState.open)}
    # done, its record expires (the partition every pass lists holds the parts at work)
    assert parts.advance(part.part_id, PartState.ingesting, PartState.done)
    item = parts._ddb.get_item(TableName=parts._table, Key=part_key(part.part_id))["Item"]
    expires = int(item[TABLE_TTL]["N"])
    assert abs(expires - (time.time() + DONE_KEEP_S)) < 60
