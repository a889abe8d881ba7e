"""A copy of a job that read the job's state before another copy moved it.

Each worker reads the states of its invocation's jobs once, at the start (``prefetch``).
Two copies of one job (a resend, every job of a file sent twice) can interleave so that
copy B reads ``new``, copy A then ends or parks the job, and only then B reserves. These
tests make that interleaving certain: A runs to its end first, then B runs with the read
it would have made before (``Batches.prefetch`` answers ``new``, the batch not cancelled).

What must hold, whatever A did: the provider is called once per job when it can be; a
call that was made is booked (the batch's cost = its cost records = the ledger's spend),
and nothing stays reserved.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import boto3
import pytest

from chatbatch.core.pricing import from_nanos
from chatbatch.local.options import LocalOptions
from chatbatch.local.runtime import LocalRuntime
from chatbatch.state.batches import Batches, BatchInfo, JobState
from chatbatch.state.budget.budget import Budget
from tests.integration.test_pipeline import queue_depth, registered

pytestmark = pytest.mark.slow

BATCH, JOB = "stale", "twin"
BODY = json.dumps({"custom_id": JOB, "prompt": "answer once", "batch_id": BATCH})


@contextmanager
def runtime() -> Iterator[LocalRuntime]:
    with LocalRuntime(LocalOptions()) as rt:
        registered(rt, BATCH)
        yield rt


def send(rt: LocalRuntime) -> None:
    """One copy of the job (a message of its own: a copy of its own), run to its end."""
    queue = rt.resources.queues[rt.config.defaults.priority]
    boto3.client("sqs").send_message(QueueUrl=queue, MessageBody=BODY)
    deadline = time.monotonic() + 60
    while queue_depth(rt, queue) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert queue_depth(rt, queue) == 0, "the copy ran to its end"


def send_stale(rt: LocalRuntime, monkeypatch: pytest.MonkeyPatch) -> None:
    """Copy B, with the read it made before copy A moved the job."""
    real = Batches.prefetch

    def before_a(self: Batches, jobs: Any) -> tuple[dict[Any, JobState], dict[str, BatchInfo]]:
        states, batches = real(self, jobs)
        states[(BATCH, JOB)] = JobState.new
        batches[BATCH] = batches[BATCH].model_copy(update={"cancelled": False})
        return states, batches

    with monkeypatch.context() as patched:
        patched.setattr(Batches, "prefetch", before_a)
        send(rt)


def cost_records(rt: LocalRuntime) -> Decimal:
    s3 = boto3.client("s3")
    total = Decimal(0)
    listing = s3.list_objects_v2(Bucket=rt.resources.bucket, Prefix="costs/")
    for obj in listing.get("Contents", []):
        record = json.loads(
            s3.get_object(Bucket=rt.resources.bucket, Key=obj["Key"])["Body"].read()
        )
        if record["batch_id"] == BATCH:
            total += Decimal(record["cost_usd"])
    return total


def books(rt: LocalRuntime) -> tuple[BatchInfo, Decimal, Decimal]:
    """The batch, the sum of its cost records, the day's spend; nothing may stay reserved."""
    info = rt.batches.get(BATCH)
    assert info is not None
    usage = Budget(boto3.client("dynamodb"), rt.resources.table, rt.config).usage()
    assert usage.reserved_usd == 0, "every reservation settled or given back"
    return info, cost_records(rt), usage.spent_usd


def requests(rt: LocalRuntime) -> int:
    assert rt.simulator is not None
    return rt.simulator.stats().requests


def test_a_copy_that_read_the_job_before_another_failed_it_calls_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A's call is refused (400) and A fails the job; B, which read ``new``, must find
    the job ended instead of reserving anew and paying for an answer nobody counts."""
    with runtime() as rt:
        assert rt.simulator is not None
        rt.simulator.inject("400")
        send(rt)  # A
        send_stale(rt, monkeypatch)  # B
        info, recorded, spent = books(rt)
        calls = requests(rt)
        stored = rt.store.get_result(BATCH, JOB)
    assert calls == 1, "B called the provider after A failed the job"
    assert (info.failed, info.succeeded, info.provider_calls) == (1, 0, 0)
    assert info.cost_nanos == 0 and recorded == spent == 0
    assert stored is None, "no result next to the job's error"


def test_a_copy_that_read_the_job_before_another_deferred_it_finishes_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A was deferred (no budget then: the job waits as ``deferred``, A's message delayed);
    B, which read ``new``, finds room, calls and must end the job from ``deferred``, with
    its cost booked; A's message, when it comes back, finds the job done."""
    with runtime() as rt:
        moved = rt.batches.transition(BATCH, JOB, prev=JobState.new, new=JobState.deferred)
        assert moved and rt.batches.get(BATCH).deferred == 1  # type: ignore[union-attr]
        send_stale(rt, monkeypatch)  # B
        send(rt)  # A comes back
        info, recorded, spent = books(rt)
        calls = requests(rt)
    assert calls == 1
    assert (info.succeeded, info.deferred, info.provider_calls) == (1, 0, 1)
    assert from_nanos(info.cost_nanos) == recorded == spent > 0


def test_an_answer_paid_after_another_copy_cancelled_the_job_is_booked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The batch is cancelled; A sees it and cancels the job; B had read the batch before
    the cancel, so it calls. The job stays cancelled, and B's call is booked: its cost in
    the batch's counters, the ledger and the cost records alike."""
    with runtime() as rt:
        rt.batches.cancel(BATCH)
        send(rt)  # A: cancelled
        send_stale(rt, monkeypatch)  # B
        info, recorded, spent = books(rt)
        calls = requests(rt)
    assert calls == 1
    assert (info.cancelled_jobs, info.succeeded, info.provider_calls) == (1, 0, 1)
    assert from_nanos(info.cost_nanos) == recorded == spent > 0
