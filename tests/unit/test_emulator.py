"""The event-source emulator scales its pollers with the queue, as Lambda's mapping does:
one poller while the queue is empty, up to ``max_concurrency`` while it has messages."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from chatbatch.local import emulator
from chatbatch.local.aws import moto_in_process
from chatbatch.local.emulator import EventSourceMapping, MappingSettings


@pytest.fixture
def queue() -> Iterator[tuple[Any, str, str]]:
    with moto_in_process():
        sqs = boto3.client("sqs", region_name="us-east-1")
        url = sqs.create_queue(QueueName="jobs")["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
        yield sqs, url, arn["Attributes"]["QueueArn"]


class Counted:
    """A ReceiveMessage counter around the SQS client."""

    def __init__(self, sqs: Any) -> None:
        self._sqs, self.receives = sqs, 0

    def receive_message(self, **kwargs: Any) -> Any:
        self.receives += 1
        return self._sqs.receive_message(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sqs, name)


def test_an_empty_queue_is_polled_by_one_poller_and_a_busy_one_by_all(queue) -> None:
    sqs, url, arn = queue
    counted = Counted(sqs)
    busy, most, lock = [0], [0], threading.Lock()

    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        with lock:
            busy[0] += 1
            most[0] = max(most[0], busy[0])
        time.sleep(0.3)
        with lock:
            busy[0] -= 1
        return {"batchItemFailures": []}

    settings = MappingSettings(url, arn, max_concurrency=8, batch_size=2)
    mapping = EventSourceMapping(counted, handler, settings)  # type: ignore[arg-type]
    mapping.start()
    try:
        time.sleep(0.5)  # the first receives find nothing; the pollers settle
        before = counted.receives
        time.sleep(3.0)
        idle = counted.receives - before
        # one poller, backing off to once a second: ~3-5 receives (ten pollers: 25+)
        assert idle <= 6, idle
        for i in range(0, 80, 10):
            entries = [{"Id": str(j), "MessageBody": f"m{i + j}"} for j in range(10)]
            sqs.send_message_batch(QueueUrl=url, Entries=entries)
        deadline = time.monotonic() + 30
        while mapping.invocations < 40 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        mapping.stop(5)
    assert mapping.invocations == 40  # 80 messages in batches of two
    assert most[0] == 8  # every poller took part


def test_a_send_wakes_the_poller_backing_off(queue, monkeypatch: pytest.MonkeyPatch) -> None:
    """The local run's feeder calls ``wake`` after a send: the poller of the empty queue
    polls at once (as SQS long polling returns when a message arrives), not at the end of
    its back-off (made a minute long here, so only the wake can explain a receive)."""
    sqs, url, arn = queue
    monkeypatch.setattr(emulator, "IDLE_POLL_MAX_S", 60.0)
    monkeypatch.setattr(emulator, "IDLE_RECHECK_S", 60.0)  # nor the waiting poller's recheck
    counted = Counted(sqs)
    got, at = threading.Event(), [0]

    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        at[0] = counted.receives
        got.set()
        return {"batchItemFailures": []}

    mapping = EventSourceMapping(counted, handler, MappingSettings(url, arn, max_concurrency=2))
    mapping.start()
    try:
        receives = -1
        while counted.receives != receives:  # until it waits a long back-off (> 3 s)
            receives = counted.receives
            time.sleep(3.0)
        sqs.send_message(QueueUrl=url, MessageBody="m")
        mapping.wake()
        assert got.wait(20), "received only after the back-off"
        # the receive the wake started got it: the first after the send, or the second when
        # a back-off poll happened to be under way as the message was sent (it found none)
        assert receives + 1 <= at[0] <= receives + 2
    finally:
        mapping.stop(5)
