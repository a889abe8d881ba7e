"""``chatbatch retry`` against moto: which failed jobs it chooses, that each goes out once
however many retries race, and what it leaves behind (history, counters, the message)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import boto3
import pytest

from chatbatch.client.deployment import Deployment
from chatbatch.client.retry import RetryPlan, plan_retry, send_retries
from chatbatch.core.config import Config, Priority
from chatbatch.core.jobs import ATTR_BATCH
from chatbatch.core.output_lines import OutputLine
from chatbatch.local.aws import create_resources, moto_in_process
from chatbatch.state.batches import BatchInfo, JobState
from chatbatch.state.budget.budget import Budget
from chatbatch.state.budget.errors import AlreadySettled
from chatbatch.state.ddb import s
from chatbatch.state.store import KeptRequest, history_key

BATCH = "b1"


@pytest.fixture
def deployment(config: Config) -> Iterator[Deployment]:
    with moto_in_process():
        resources = create_resources(config)
        yield Deployment(config=config, stack="test", resources=resources, aws=boto3.Session())


def failed(
    d: Deployment,
    custom_id: str,
    code: str,
    *,
    state: JobState = JobState.failed,
    priority: Priority = Priority.high,
    keep: bool = True,
    body: str | None = None,
) -> None:
    """A job as the worker leaves it when it fails: error line, kept request, state + code."""
    line = OutputLine.failure(BATCH, custom_id, code, f"{code}: it went wrong")
    d.store.put_error(BATCH, line)
    if keep:
        text = body or json.dumps({"custom_id": custom_id, "prompt": f"hello {custom_id}"})
        kept = KeptRequest(batch_id=BATCH, custom_id=custom_id, priority=priority, body=text)
        d.store.put_request(kept)
    fields = {"error_code": s(code)}
    assert d.batches.transition(BATCH, custom_id, prev=JobState.new, new=state, fields=fields)


def info(d: Deployment) -> BatchInfo:
    got = d.batches.get(BATCH)
    assert got is not None
    return got


def received(d: Deployment, priority: Priority) -> list[dict[str, object]]:
    messages: list[dict[str, object]] = []
    while True:
        got = d.sqs.receive_message(
            QueueUrl=d.resources.queues[priority],
            MaxNumberOfMessages=10,
            MessageAttributeNames=["All"],
        ).get("Messages", [])
        if not got:
            return messages
        messages.extend(got)  # type: ignore[arg-type]


def test_the_plan_chooses_by_last_error_code_and_counts_what_it_leaves(deployment: Deployment):
    d = deployment
    failed(d, "a", "provider_400")
    failed(d, "b", "provider_400")
    failed(d, "c", "over_request_cap")
    failed(d, "d", "dead_lettered", state=JobState.dead_lettered)
    failed(d, "bad", "invalid_job", keep=False)  # an invalid line keeps no request
    # a job that failed, then succeeded (redriven): its request stays, it is not failed
    failed(d, "done", "dead_lettered", state=JobState.dead_lettered)
    d.batches.transition(BATCH, "done", prev=JobState.dead_lettered, new=JobState.succeeded)
    d.batches.transition(BATCH, "ok", prev=JobState.new, new=JobState.succeeded)

    every = plan_retry(d, info(d))
    assert [j.custom_id for j in every.jobs] == ["a", "b", "c", "d"]
    assert every.by_code == {"provider_400": 2, "over_request_cap": 1, "dead_lettered": 1}
    assert (every.not_retriable, every.retrying, sum(every.other_codes.values())) == (1, 0, 0)

    some = plan_retry(d, info(d), ["provider_400", "dead_lettered"])
    assert [j.custom_id for j in some.jobs] == ["a", "b", "d"]
    assert some.other_codes == {"over_request_cap": 1}
    assert plan_retry(d, info(d), ["provider_40"]).jobs == []  # codes match whole


def test_a_retry_moves_state_counters_and_error_then_sends_the_kept_message(
    deployment: Deployment,
):
    d = deployment
    failed(d, "a", "provider_400", priority=Priority.low)
    claim = json.dumps({"chatbatch_claim_check": {"bucket": "x", "key": "k", "custom_id": "d"}})
    failed(d, "d", "dead_lettered", state=JobState.dead_lettered, body=claim)
    before = info(d)
    assert (before.failed, before.dead_lettered) == (1, 1)

    result = send_retries(d, plan_retry(d, before))
    assert (result.sent, result.skipped) == (2, 0)
    after = info(d)
    assert (after.failed, after.dead_lettered, after.finished) == (0, 0, 0)
    jobs = {j.custom_id: j for j in d.batches.jobs(BATCH, ["a", "d"])}
    assert {j.state for j in jobs.values()} == {JobState.retrying}
    assert {j.retries for j in jobs.values()} == {1}
    # the error line went to the history: collect sees the job unfinished, not failed
    assert d.store.get_error(BATCH, "a") is None
    moved = d.store.get_text(history_key(BATCH, "a", 1))
    assert moved is not None and json.loads(moved)["error"]["code"] == "provider_400"
    # the message as the worker received it, on its queue, carrying its batch
    (low,) = received(d, Priority.low)
    assert low["Body"] == json.dumps({"custom_id": "a", "prompt": "hello a"})
    assert low["MessageAttributes"] == {ATTR_BATCH: {"StringValue": BATCH, "DataType": "String"}}
    (high,) = received(d, Priority.high)
    assert high["Body"] == claim  # a claim check goes out as a claim check

    # the job ends again: counted once more, as what it became
    assert d.batches.transition(BATCH, "a", prev=JobState.retrying, new=JobState.succeeded)
    assert d.batches.transition(BATCH, "d", prev=JobState.retrying, new=JobState.failed)
    final = info(d)
    assert (final.succeeded, final.failed, final.dead_lettered) == (1, 1, 0)
    # and can be retried again: its first error stays in history/1, the second goes to 2
    failed_again = OutputLine.failure(BATCH, "d", "provider_400", "second")
    d.store.put_error(BATCH, failed_again)
    assert send_retries(d, plan_retry(d, final)).sent == 1
    second = d.store.get_text(history_key(BATCH, "d", 2))
    assert second is not None and json.loads(second)["error"]["message"] == "second"
    assert d.store.get_text(history_key(BATCH, "d", 1)) is not None


def test_racing_retries_send_each_job_once(deployment: Deployment):
    """Eight retries plan from the same reads, then all send at once: each job goes out
    once, and the batch's failed count drops once per job."""
    d = deployment
    ids = [f"j{i:02d}" for i in range(25)]
    for custom_id in ids:
        failed(d, custom_id, "provider_400")
    plans = [plan_retry(d, info(d)) for _ in range(8)]
    start = threading.Barrier(len(plans))

    def run(plan: RetryPlan) -> int:
        start.wait()
        result = send_retries(d, plan)
        assert result.sent + result.skipped == len(ids)
        return result.sent

    with ThreadPoolExecutor(len(plans)) as pool:
        assert sum(pool.map(run, plans)) == len(ids)
    bodies = [m["Body"] for m in received(d, Priority.high)]
    assert sorted(json.loads(str(b))["custom_id"] for b in bodies) == ids
    assert (info(d).failed, {j.retries for j in d.batches.jobs(BATCH, ids)}) == (0, {1})


def test_a_stale_plan_never_sends_a_job_that_ran_again(deployment: Deployment):
    """Planned while failed; meanwhile another retry sent it and it failed again: the state
    is ``failed`` as read, but the retry count is not, so the stale plan sends nothing."""
    d = deployment
    failed(d, "a", "provider_400")
    stale = plan_retry(d, info(d))
    assert send_retries(d, plan_retry(d, info(d))).sent == 1
    assert d.batches.transition(BATCH, "a", prev=JobState.retrying, new=JobState.failed)
    d.store.put_error(BATCH, OutputLine.failure(BATCH, "a", "provider_400", "again"))
    assert (send_retries(d, stale).sent, len(received(d, Priority.high))) == (0, 1)
    assert d.store.get_error(BATCH, "a") is not None  # the new error stays where it is


def test_stuck_sends_again_jobs_an_interrupted_retry_left_in_retrying(deployment: Deployment):
    d = deployment
    failed(d, "a", "provider_400")
    (job,) = d.batches.jobs(BATCH, ["a"])
    assert d.batches.retry(BATCH, job)  # step 1 done, then the retry died before sending
    plan = plan_retry(d, info(d))
    assert (plan.jobs, plan.retrying) == ([], 1)
    stuck = plan_retry(d, info(d), stuck=True)
    assert [j.custom_id for j in stuck.jobs] == ["a"] and stuck.by_code == {"provider_400": 1}
    assert send_retries(d, stuck).sent == 1
    assert len(received(d, Priority.high)) == 1
    assert info(d).failed == 0  # counted down once, by the first move


def test_a_settled_reservation_of_the_failed_attempt_does_not_stop_the_new_one(
    deployment: Deployment, config: Config
):
    """Were a failed attempt's reservation settled (its billed cost booked), the new copy
    would find it paid (``AlreadySettled``) and stop: retry drops it; the ledger keeps
    the money."""
    d = deployment
    budget = Budget(d.ddb, d.resources.table, config)
    key = f"{BATCH}#a"
    held = budget.reserve(key, 1_000, batch_id=BATCH, owner="m1")
    assert budget.settle(held, 700)
    with pytest.raises(AlreadySettled):
        budget.reserve(key, 1_000, batch_id=BATCH, owner="m2")
    failed(d, "a", "provider_400")
    assert send_retries(d, plan_retry(d, info(d))).sent == 1
    again = budget.reserve(key, 1_000, batch_id=BATCH, owner="m2")
    assert not again.resumed
    usage = budget.usage()
    assert usage.spent_usd * 10**9 == 700 and usage.reserved_usd * 10**9 == 1_000


def test_errors_are_told_by_code_when_threads_got_other_exception_classes(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch
):
    """botocore makes a client's exception classes on first use without a lock: threads
    that use a fresh client at once may hold different classes, and ``except
    client.exceptions.X`` misses what the call raised (two racing `chatbatch retry` runs
    died of it). Here every use gets new classes: a missing object and a refused
    transaction are still told apart from real errors."""
    d = deployment
    failed(d, "a", "provider_400")
    (job,) = d.batches.jobs(BATCH, ["a"])
    for client in (d.s3, d.ddb):
        fresh = property(
            lambda c: c._exceptions_factory._create_client_exceptions(c.meta.service_model)
        )
        monkeypatch.setattr(type(client), "exceptions", fresh)
    assert d.store.get_request(BATCH, "missing") is None
    assert d.batches.retry(BATCH, job)
    assert not d.batches.retry(BATCH, job)  # a refused transaction: False, not an error
    assert send_retries(d, plan_retry(d, info(d), stuck=True)).sent == 1


def test_a_job_with_a_hashed_custom_id_is_retried_by_its_own_id(deployment: Deployment):
    """``task/1`` is stored under its hash; the retry finds it and sends it back as itself."""
    d = deployment
    failed(d, "task/1", "provider_400")
    plan = plan_retry(d, info(d))
    assert [j.custom_id for j in plan.jobs] == ["task/1"]
    assert send_retries(d, plan).sent == 1
    (sent,) = received(d, Priority.high)
    assert json.loads(sent["Body"])["custom_id"] == "task/1"
    assert d.store.get_error(BATCH, "task/1") is None
