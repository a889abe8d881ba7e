"""Which line of a job counts when it is in two objects (``client/flush_objects.py``): the
one in the object of the flush its state item names; a job with none, its own ``.json``."""

from __future__ import annotations

import json
from collections.abc import Iterable

import pytest

from chatbatch.client.flush_objects import CostLines, committed_key
from chatbatch.state.batches import JobRecord, JobState
from chatbatch.state.store import cost_key, flush_cost_key, flush_result_key, result_key


class States:
    """The job states ``resolve`` reads (``Batches.jobs``), by custom_id."""

    def __init__(self, flushes: dict[str, str | None]) -> None:
        self.flushes = flushes
        self.asked: list[list[str]] = []

    def jobs(self, batch_id: str, custom_ids: Iterable[str]) -> list[JobRecord]:
        ids = list(custom_ids)
        self.asked.append(ids)
        return [
            JobRecord(custom_id=c, state=JobState.succeeded, flush=self.flushes.get(c)) for c in ids
        ]


def test_the_committed_line_is_in_the_object_of_the_jobs_flush() -> None:
    keys = [flush_result_key("b", "f1"), flush_result_key("b", "f2"), result_key("b", "j")]
    assert committed_key(keys, "f2") == keys[1]
    assert committed_key(keys, None) == keys[2], "a job from before flush objects: its own"
    assert committed_key(keys[:2], "f3") is None, "every line an orphan"


def record(custom_id: str, cost: int, attempt: str | None = None) -> str:
    return json.dumps(
        {"batch_id": "b", "custom_id": custom_id, "cost_nanos": cost, "attempt": attempt}
    )


def test_a_jobs_cost_record_found_twice_counts_once_and_only_twins_are_looked_up() -> None:
    lines = CostLines()
    day = "2026-12-02"
    read = [
        (flush_cost_key(day, "b", "f1"), record("a", 1)),
        (flush_cost_key(day, "b", "f1"), record("b", 2)),
        (flush_cost_key(day, "b", "f2"), record("a", 100)),  # an orphan of "a", or not
        (cost_key(day, "b", "a", "r1"), record("a", 5, attempt="r1")),  # an unread call
    ]
    now = [counted for key, text in read if (counted := lines.add(key, text)) is not None]
    assert [json.loads(t)["cost_nanos"] for t in now] == [5], "an unread call counts at once"
    states = States({"a": "f2", "b": "f1"})
    kept = [json.loads(t) for t in lines.resolved(states)]  # type: ignore[arg-type]
    assert sorted((r["custom_id"], r["cost_nanos"]) for r in kept) == [("a", 100), ("b", 2)]
    assert states.asked == [["a"]], "only the job seen twice costs a state read"


def test_twins_without_the_job_states_are_a_clear_error() -> None:
    lines = CostLines()
    for flush in ("f1", "f2"):
        lines.add(flush_cost_key("2026-12-02", "b", flush), record("a", 1))
    with pytest.raises(ValueError, match="batches="):
        list(lines.resolved(None))
