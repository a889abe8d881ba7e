"""``local/returns``: a local run knows when the jobs handed back for a short while come
back, from the delays of the messages its workers send (botocore's hooks on the run's
session), so a run left with deferred jobs only ends once those are back, not after a
fixed wait (``LocalRuntime.wait``)."""

from __future__ import annotations

import boto3
import pytest

from chatbatch.local import sessions
from chatbatch.local.returns import Returns
from chatbatch.state.budget import errors as budget_errors
from tests.unit.conftest import REGION


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_only_short_delays_are_waited_for() -> None:
    clock = Clock()
    returns = Returns(clock)
    assert returns.due_in() == 0.0
    returns({"QueueUrl": "q", "MessageBody": "{}"})  # no delay: received at once
    returns({"DelaySeconds": 900})  # a batch at its limit, a job above the day's: not waited
    assert returns.due_in() == 0.0
    returns({"DelaySeconds": 4})
    returns({"DelaySeconds": int(budget_errors.BUSY_RETRY_S)})  # reservations in flight
    returns({"DelaySeconds": 2})
    assert returns.due_in() == budget_errors.BUSY_RETRY_S
    entries = [{"Id": "a", "DelaySeconds": 900}, {"Id": "b", "DelaySeconds": 9}, {"Id": "c"}]
    clock.now += 10
    returns({"QueueUrl": "q", "Entries": entries})  # a batch: its longest short delay
    assert returns.due_in() == 9
    clock.now += 10
    assert returns.due_in() == -1.0, "back a second ago"


def test_the_delays_of_the_sessions_sends_are_read(
    aws: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through a real client of the run's session, on moto: a hand-back's delay is seen
    (and the message is sent as asked: the hook changes nothing)."""
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # the session after this test
    sessions.install()
    returns = Returns()
    returns.install()
    sqs = boto3.client("sqs", region_name=REGION)
    url = sqs.create_queue(QueueName="returns")["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="later", DelaySeconds=12)
    assert returns.due_in() == pytest.approx(12, abs=1)
    entries = [{"Id": "a", "MessageBody": "replayed", "DelaySeconds": 14}]
    sqs.send_message_batch(QueueUrl=url, Entries=entries)  # type: ignore[arg-type]
    assert returns.due_in() == pytest.approx(14, abs=1)
    attributes = sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessagesDelayed"]
    )["Attributes"]
    assert attributes["ApproximateNumberOfMessagesDelayed"] == "2"
