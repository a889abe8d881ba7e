"""The "Batch Completed" event through the local runtime: EventBridge in moto, a rule on
the default bus that targets an SQS queue, and many workers finishing one batch at once.

Exactly one event per completion, with the batch's final counts and cost, even with every
job delivered twice, and even when the first put fails (the records come back and their
redelivery puts it). The conditional marks behind it (``state.completion``) are checked
on their own too: a stale claim whose event was never sent is taken over, a fresh one is
not, and a batch retried and completed again completes anew.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import pytest

from chatbatch.client.deployment import connect
from chatbatch.client.flush_objects import cost_lines
from chatbatch.client.retry import plan_retry, send_retries
from chatbatch.core.config import Config, Priority
from chatbatch.core.events import BATCH_COMPLETED, SOURCE, BatchCompleted
from chatbatch.core.pricing import from_nanos
from chatbatch.local.aws import moto_in_process
from chatbatch.local.options import LocalOptions
from chatbatch.local.runtime import LocalRuntime
from chatbatch.local.simulator import FaultKind, SimulatorSettings
from chatbatch.state.batches import Batches, BatchInfo, batch_key
from chatbatch.state.completion import CLAIM_LEASE_S, Completions, due
from chatbatch.worker import completion

pytestmark = pytest.mark.slow

JOBS = 120


def job_file(tmp: Path, n: int, prefix: str) -> Path:
    priorities = [p.value for p in Priority]
    path = tmp / f"{prefix}.jsonl"
    lines = [
        {"custom_id": f"{prefix}{i:03d}", "prompt": f"label {i}", "priority": priorities[i % 4]}
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def event_sink() -> str:
    """An SQS queue fed by a rule on the default bus: every Batch Completed event."""
    sqs, events = boto3.client("sqs"), boto3.client("events")
    url = sqs.create_queue(QueueName="batch-completed-sink")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
    pattern = {"source": [SOURCE], "detail-type": [BATCH_COMPLETED]}
    events.put_rule(Name="batch-completed", EventPattern=json.dumps(pattern))
    target = {"Id": "sink", "Arn": arn["Attributes"]["QueueArn"]}
    events.put_targets(Rule="batch-completed", Targets=[target])
    return str(url)


def drain(url: str) -> list[dict[str, Any]]:
    """Every event in the sink so far (deleted as read)."""
    sqs = boto3.client("sqs")
    found: list[dict[str, Any]] = []
    while True:
        reply = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)
        messages = reply.get("Messages", [])
        if not messages:
            return found
        for message in messages:
            found.append(json.loads(message["Body"]))
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])


def queues_empty(rt: LocalRuntime) -> bool:
    sqs = boto3.client("sqs")
    names: list[Any] = [
        "ApproximateNumberOfMessages",
        "ApproximateNumberOfMessagesNotVisible",
        "ApproximateNumberOfMessagesDelayed",
    ]
    for url in rt.resources.queues.values():
        reply = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names)
        if any(int(count) for count in reply["Attributes"].values()):
            return False
    return True


def received(url: str, events: list[dict[str, Any]], n: int) -> bool:
    """Read the sink into ``events``; True once it holds ``n``."""
    events.extend(drain(url))
    return len(events) >= n


def wait_for(check: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@dataclass
class Run:
    info: BatchInfo
    events: list[dict[str, Any]]
    cost_nanos: int  # the sum of the batch's cost records
    puts: list[str]  # the batches whose event the worker tried to put (with fail_first_put)
    first: BatchInfo  # the counters at the first completion


def run_batch(
    tmp: Path, config: Config, *, duplicate: bool, fail_first_put: bool, retry: bool = False
) -> Iterator[Run]:
    quick = config.model_copy(
        update={"worker": config.worker.model_copy(update={"batch_size": 2, "batch_window_s": 0})}
    )
    config_path = tmp / "chatbatch.json"
    config_path.write_text(quick.model_dump_json())
    options = LocalOptions(
        config_path=config_path,
        concurrency=5,  # 4 priorities x 5: 20 workers
        rpm=1_000_000,
        tpm=1_000_000_000,
        # a message comes back only when its invocation failed it: never while its job
        # runs (two deliveries of one message would both call the provider); a failed put
        # sends the records back, and they come again after this
        visibility_timeout_s=20 if fail_first_put else None,
        simulator=SimulatorSettings(latency_ms=150, fault_rates={FaultKind.bad_request: 0.15}),
        timeout_s=120,
    )
    with pytest.MonkeyPatch.context() as monkeypatch, LocalRuntime(options) as rt:
        puts: list[str] = []
        if fail_first_put:
            real = completion.put_event

            def failing_once(services: Any, detail: BatchCompleted) -> None:
                puts.append(detail.batch_id)
                if len(puts) == 1:
                    raise RuntimeError("EventBridge unavailable")
                real(services, detail)

            monkeypatch.setattr(completion, "put_event", failing_once)
        sink = event_sink()
        plan = rt.submit(job_file(tmp, JOBS, "e"))
        if duplicate:  # every job delivered twice, the copies close together
            for feeder in rt.feeders.values():
                feeder.backlog.extend(list(feeder.backlog))
        rt.wait(plan)
        events: list[dict[str, Any]] = []
        wait_for(lambda: received(sink, events, 1), 90, "the event")
        wait_for(lambda: queues_empty(rt), 120, "every copy and redelivery to end")
        time.sleep(1)
        events += drain(sink)
        info = first = rt.batches.get(plan.batch_id)
        assert first is not None and info is not None
        if retry:  # `chatbatch retry`: the failed jobs again, answered this time
            assert rt.simulator is not None
            rt.simulator.configure(fault_rates={})
            rt.register_stack()
            deployment = connect(rt.config)
            send_retries(deployment, plan_retry(deployment, info))
            wait_for(lambda: _completed_again(rt, plan.batch_id), 120, "the second completion")
            wait_for(lambda: received(sink, events, 2), 60, "the second event")
            wait_for(lambda: queues_empty(rt), 120, "the retried jobs to end")
            time.sleep(1)
            events += drain(sink)
            info = rt.batches.get(plan.batch_id)
            assert info is not None
        costs = _cost_nanos(rt, plan.batch_id)
        yield Run(info=info, events=events, cost_nanos=costs, puts=puts, first=first)


def _completed_again(rt: LocalRuntime, batch_id: str) -> bool:
    info = rt.batches.get(batch_id)
    return info is not None and info.retried > 0 and info.complete


def _cost_nanos(rt: LocalRuntime, batch_id: str) -> int:
    lines = cost_lines(boto3.client("s3"), rt.resources.bucket, rt.batches, batch_id)
    return sum(int(json.loads(line)["cost_nanos"]) for line in lines)


@pytest.fixture
def doubled(tmp_path: Path, config: Config) -> Iterator[Run]:
    yield from run_batch(tmp_path, config, duplicate=True, fail_first_put=False)


@pytest.fixture
def flaky(tmp_path: Path, config: Config) -> Iterator[Run]:
    yield from run_batch(tmp_path, config, duplicate=False, fail_first_put=True)


def check_one_event(run: Run) -> None:
    info = run.info
    assert len(run.events) == 1, run.events
    check_event(run.events[0], info, run.cost_nanos)
    assert info.completion_sent_gen == 0 and info.completed_at is not None


def check_event(event: dict[str, Any], info: BatchInfo, cost_nanos: int) -> None:
    """The event is ``info``'s completion: its counts, its cost (= its cost records)."""
    assert event["source"] == SOURCE and event["detail-type"] == BATCH_COMPLETED
    detail = BatchCompleted.model_validate(event["detail"])
    assert detail.batch_id == info.batch_id and detail.completion == info.retried
    assert detail.event_id == f"{info.batch_id}#{info.retried}"
    assert detail.total == JOBS
    assert (detail.succeeded, detail.failed, detail.cancelled, detail.dead_lettered) == (
        info.succeeded,
        info.failed,
        info.cancelled_jobs,
        info.dead_lettered,
    )
    assert detail.succeeded + detail.failed + detail.cancelled + detail.dead_lettered == JOBS
    assert detail.succeeded > 0
    assert detail.cost_nanos == info.cost_nanos == cost_nanos > 0
    assert detail.cost_usd == from_nanos(cost_nanos) > Decimal(0)
    assert detail.results.startswith("s3://") and detail.results.endswith(
        f"/results/{info.batch_id}/"
    )


def test_twenty_workers_and_every_job_twice_make_exactly_one_event(doubled: Run) -> None:
    check_one_event(doubled)
    assert doubled.info.failed > 0  # the 400s: failed, never retried, counted


def test_a_failed_put_comes_back_with_its_records_and_is_put_once(flaky: Run) -> None:
    assert flaky.puts == [flaky.info.batch_id] * 2  # refused once, put by the redelivery
    check_one_event(flaky)


@pytest.fixture
def table() -> Iterator[tuple[Batches, Completions]]:
    name = f"events-{uuid.uuid4().hex}"
    with moto_in_process():
        ddb = boto3.client("dynamodb")
        ddb.create_table(
            TableName=name,
            KeySchema=[
                {"AttributeName": "pk", "KeyType": "HASH"},
                {"AttributeName": "sk", "KeyType": "RANGE"},
            ],
            AttributeDefinitions=[
                {"AttributeName": "pk", "AttributeType": "S"},
                {"AttributeName": "sk", "AttributeType": "S"},
            ],
            BillingMode="PAY_PER_REQUEST",
        )
        yield Batches(ddb, name), Completions(ddb, name)


def _complete(batches: Batches, batch_id: str, **counters: int) -> BatchInfo:
    boto3.client("dynamodb").put_item(
        TableName=batches._table,
        Item={**batch_key(batch_id), "total": {"N": "4"}}
        | {k: {"N": str(v)} for k, v in counters.items()},
    )
    info = batches.get(batch_id)
    assert info is not None
    return info


def test_a_stale_unsent_claim_is_taken_over_a_fresh_one_is_not(
    table: tuple[Batches, Completions],
) -> None:
    batches, completions = table
    info = _complete(batches, "b1", succeeded=3, failed=1)
    assert due(info)
    now = time.time()
    assert completions.claim(info, now)
    assert not completions.claim(info, now + 1)  # another worker, same completion: no
    # the claimer crashed before PutEvents (or after it, before the mark): once stale, yes
    assert completions.claim(info, now + CLAIM_LEASE_S + 1)
    completions.sent("b1", 0, now + CLAIM_LEASE_S + 2)
    sent = batches.get("b1")
    assert sent is not None and not due(sent)
    assert not completions.claim(sent, now + 10 * CLAIM_LEASE_S)  # sent: never again


def test_a_batch_retried_and_completed_again_completes_anew(
    table: tuple[Batches, Completions],
) -> None:
    batches, completions = table
    info = _complete(batches, "b2", succeeded=3, failed=1)
    assert not due(_complete(batches, "b3", succeeded=2, failed=1))  # one job still running
    now = time.time()
    assert completions.claim(info, now)
    completions.sent("b2", 0, now)
    # `chatbatch retry` sent the failed job again (retried 1) and it succeeded
    again = _complete(
        batches, "b2", succeeded=4, retried=1, completion_gen=0, completion_sent_gen=0
    )
    assert due(again) and completions.claim(again, now + 1)
    assert not completions.claim(again, now + 2)


def test_a_batch_retried_after_completing_completes_again_with_a_new_event(
    tmp_path: Path, config: Config
) -> None:
    (run,) = run_batch(tmp_path, config, duplicate=False, fail_first_put=False, retry=True)
    first, info = run.first, run.info
    assert len(run.events) == 2, run.events
    assert first.failed > 0 and first.retried == 0
    assert run.events[0]["detail"]["failed"] == first.failed
    assert run.events[0]["detail"]["event_id"] == f"{info.batch_id}#0"
    # the retried jobs answered: the second completion counts them, with the new cost
    assert info.retried == first.failed and (info.succeeded, info.failed) == (JOBS, 0)
    check_event(run.events[1], info, run.cost_nanos)
    assert info.completion_sent_gen == info.retried
