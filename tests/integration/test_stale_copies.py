"""A copy of a job that read the job's state before another copy moved it.

Each worker reads the states of its invocation's jobs once, at the start (``prefetch``).
Two copies of one job (a resend, every job of a file sent twice) can interleave so that
copy B reads ``new``, copy A then ends or parks the job, and only then B reserves. These
tests make that interleaving certain: A runs to its end first, then B runs with the read
it would have made before (``Batches.prefetch`` answers ``new``, the batch not cancelled).

What must hold, whatever A did: the provider is called once per job when it can be; a
call that was made is booked (the batch's cost = its cost records = the ledger's spend),
nothing stays reserved, and a paid answer ends its job (it is never left next to an
error, nor booked again by ``chatbatch retry``). Several interleavings come from an
adversarial review of the first fix.
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

from chatbatch.client.deployment import connect
from chatbatch.client.flush_objects import cost_lines
from chatbatch.client.retry import plan_retry, send_retries
from chatbatch.core.pricing import from_nanos
from chatbatch.local.options import LocalOptions
from chatbatch.local.runtime import LocalRuntime
from chatbatch.state.batches import Batches, BatchInfo, JobState
from chatbatch.state.budget.budget import Budget
from chatbatch.worker.intake import ATTR_HANDBACKS
from tests.integration.test_pipeline import queue_depth, registered

pytestmark = pytest.mark.slow

BATCH, JOB = "stale", "twin"
BODY = json.dumps({"custom_id": JOB, "prompt": "answer once", "batch_id": BATCH})


@contextmanager
def runtime() -> Iterator[LocalRuntime]:
    with LocalRuntime(LocalOptions()) as rt:
        registered(rt, BATCH)
        yield rt


def send(rt: LocalRuntime, *others: dict[str, Any]) -> None:
    """One copy of the job (a message of its own: a copy of its own), and ``others`` in
    the same batch of messages, run to their end."""
    queue = rt.resources.queues[rt.config.defaults.priority]
    bodies = [BODY, *(json.dumps(other) for other in others)]
    entries: Any = [{"Id": str(i), "MessageBody": body} for i, body in enumerate(bodies)]
    boto3.client("sqs").send_message_batch(QueueUrl=queue, Entries=entries)
    wait_empty(rt)


def wait_empty(rt: LocalRuntime) -> None:
    """Until every message sent has run to its end."""
    queue = rt.resources.queues[rt.config.defaults.priority]
    deadline = time.monotonic() + 60
    while queue_depth(rt, queue) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert queue_depth(rt, queue) == 0, "the copy ran to its end"


def send_stale(rt: LocalRuntime, monkeypatch: pytest.MonkeyPatch, *others: dict[str, Any]) -> None:
    """Copy B, with the read it made before copy A moved the job (and ``others``, jobs of
    the batch sent with it in one batch of messages)."""
    real = Batches.prefetch

    def before_a(self: Batches, jobs: Any) -> tuple[dict[Any, JobState], dict[str, BatchInfo]]:
        states, batches = real(self, jobs)
        states[(BATCH, JOB)] = JobState.new
        batches[BATCH] = batches[BATCH].model_copy(update={"cancelled": False})
        return states, batches

    with monkeypatch.context() as patched:
        patched.setattr(Batches, "prefetch", before_a)
        send(rt, *others)


def cost_records(rt: LocalRuntime) -> Decimal:
    s3 = boto3.client("s3")
    total = Decimal(0)
    for line in cost_lines(s3, rt.resources.bucket, rt.batches, BATCH):
        total += Decimal(json.loads(line)["cost_usd"])
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
        stored = rt.result(BATCH, JOB)
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


def test_an_answer_paid_after_another_copy_cancelled_the_job_ends_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The batch is cancelled; A sees it and cancels the job; B had read the batch before
    the cancel, so its call was out: its answer, paid, ends the job (``cancelled`` ->
    ``succeeded``), booked like any other, and is the job's result."""
    with runtime() as rt:
        rt.batches.cancel(BATCH)
        send(rt)  # A: cancelled
        assert rt.batches.get(BATCH).cancelled_jobs == 1  # type: ignore[union-attr]
        send_stale(rt, monkeypatch)  # B
        info, recorded, spent = books(rt)
        calls = requests(rt)
        stored = rt.result(BATCH, JOB)
    assert calls == 1
    assert (info.cancelled_jobs, info.succeeded, info.provider_calls) == (0, 1, 1)
    assert from_nanos(info.cost_nanos) == recorded == spent > 0
    assert stored is not None and stored.chatbatch is not None
    assert stored.chatbatch.cost_usd == recorded


def test_an_answer_paid_after_another_copy_expired_the_job_ends_it_and_retry_leaves_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A expires (handed back too often under a batch limit with no room: ``failed``,
    ``batch_expired``); B, which read ``new``, reserves once the limit is raised, calls,
    and its answer ends the job (``failed`` -> ``succeeded``). ``chatbatch retry`` then
    has nothing to send: the answer is neither booked nor asked for twice."""
    with runtime() as rt:
        me = rt.batches.get(BATCH).registrant  # type: ignore[union-attr]
        limits = {"total": 1, "priority": "normal", "checksum": "0" * 64, "registrant": me}
        rt.batches.register(BATCH, **limits, budget_nanos=1)  # type: ignore[arg-type]
        queue = rt.resources.queues[rt.config.defaults.priority]
        many = str(rt.config.worker.max_handbacks)
        attrs: Any = {ATTR_HANDBACKS: {"DataType": "Number", "StringValue": many}}
        boto3.client("sqs").send_message(QueueUrl=queue, MessageBody=BODY, MessageAttributes=attrs)
        wait_empty(rt)  # A
        [job] = rt.batches.jobs(BATCH, [JOB])
        assert (job.state, job.error_code) == (JobState.failed, "batch_expired")
        rt.batches.register(BATCH, **limits, budget_nanos=10**12)  # type: ignore[arg-type]
        send_stale(rt, monkeypatch)  # B
        rt.register_stack()
        deployment = connect(rt.config)
        info = rt.batches.get(BATCH)
        assert info is not None
        sent = send_retries(deployment, plan_retry(deployment, info)).sent
        wait_empty(rt)
        info, recorded, spent = books(rt)
        calls = requests(rt)
    assert sent == 0 and calls == 1
    assert (info.succeeded, info.failed, info.provider_calls) == (1, 0, 1)
    assert from_nanos(info.cost_nanos) == recorded == spent > 0


def test_a_copy_refused_after_another_deferred_the_job_ends_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The deferral interleaving with the provider refusing (400): B's refusal ends the
    job from ``deferred`` (the gauge back to 0), and A, back from its delay, finds it
    ended and calls nothing."""
    with runtime() as rt:
        assert rt.simulator is not None
        rt.simulator.inject("400", "400")
        assert rt.batches.transition(BATCH, JOB, prev=JobState.new, new=JobState.deferred)
        send_stale(rt, monkeypatch)  # B: called, refused
        [job] = rt.batches.jobs(BATCH, [JOB])
        between = (job.state, rt.batches.get(BATCH).deferred)  # type: ignore[union-attr]
        send(rt)  # A comes back
        info, recorded, spent = books(rt)
        calls = requests(rt)
    assert between == (JobState.failed, 0)
    assert (calls, info.failed, info.deferred) == (1, 1, 0)
    assert info.cost_nanos == 0 and recorded == spent == 0


@pytest.mark.parametrize("waiting", [JobState.throttled, JobState.paused, JobState.dead_lettered])
def test_a_copy_ends_a_job_another_parked_and_the_parked_copy_finds_it_done(
    monkeypatch: pytest.MonkeyPatch, waiting: JobState
) -> None:
    """Another copy parked the job (holding no reservation); B, which read ``new``, calls
    and ends it from there: the gauge goes back to 0, and the parked copy (a redrive of a
    dead-lettered one) then finds it done and calls nothing."""
    with runtime() as rt:
        assert rt.batches.transition(BATCH, JOB, prev=JobState.new, new=waiting)
        send_stale(rt, monkeypatch)  # B
        send(rt)  # the parked copy (redriven) comes back
        info, recorded, spent = books(rt)
        calls = requests(rt)
    gauges = (info.deferred, info.throttled, info.paused, info.dead_lettered)
    assert (info.succeeded, gauges, info.provider_calls, calls) == (1, (0, 0, 0, 0), 1, 1)
    assert from_nanos(info.cost_nanos) == recorded == spent > 0


def test_a_refusal_whose_reservation_was_reclaimed_in_the_call_still_fails_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The reservation is reclaimed while the call is out (armed: the reclaim books its
    worst case in the ledger, as docs/budget.md says); the 400 comes back, ``fail``'s
    settle is refused and it ends the job without it: ``failed``, counted once, nothing
    else booked; ``chatbatch retry`` then answers it, counted once."""
    real_arm = Budget.arm
    worst: list[int] = []

    def arm_then_reclaimed(self: Budget, r: Any) -> bool:
        armed = real_arm(self, r)
        if armed and not worst:
            worst.append(r.nanos)
            assert self.release(r.model_copy(), spent_nanos=r.nanos)  # what _reclaim does
        return armed

    with runtime() as rt:
        assert rt.simulator is not None
        rt.simulator.inject("400")
        monkeypatch.setattr(Budget, "arm", arm_then_reclaimed)
        send(rt)
        info, recorded, spent = books(rt)
        [job] = rt.batches.jobs(BATCH, [JOB])
        assert (job.state, job.error_code) == (JobState.failed, "provider_400")
        assert (info.failed, info.succeeded, info.cost_nanos, recorded) == (1, 0, 0, 0)
        assert spent == from_nanos(worst[0]), "the reclaim's booking, nothing more"
        rt.register_stack()
        deployment = connect(rt.config)
        assert send_retries(deployment, plan_retry(deployment, info)).sent == 1
        wait_empty(rt)
        info, recorded, again = books(rt)
        calls = requests(rt)
    assert (info.failed, info.succeeded, info.provider_calls, calls) == (0, 1, 1, 2)
    assert from_nanos(info.cost_nanos) == recorded == again - spent > 0


def test_a_stale_copy_in_a_group_commit_lets_its_neighbours_settle_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """B comes in one invocation with three other jobs. The group's one final transaction
    (``worker/finals.py``) is refused on B's stale state, nothing of it is written, and
    each job settles on its own: B from ``deferred``, its neighbours as usual."""
    commits: list[bool] = []
    real = Batches.commit

    def counted(self: Batches, items: Any) -> bool:
        commits.append(real(self, items))
        return commits[-1]

    monkeypatch.setattr(Batches, "commit", counted)
    others = [
        {"custom_id": f"n{i}", "prompt": f"neighbour {i}", "batch_id": BATCH} for i in range(3)
    ]
    with runtime() as rt:
        assert rt.batches.transition(BATCH, JOB, prev=JobState.new, new=JobState.deferred)
        send_stale(rt, monkeypatch, *others)
        info, recorded, spent = books(rt)
        calls = requests(rt)
    assert False in commits, "a group commit was tried and refused"
    assert calls == 4
    assert (info.succeeded, info.deferred, info.provider_calls) == (4, 0, 4)
    assert from_nanos(info.cost_nanos) == recorded == spent > 0
