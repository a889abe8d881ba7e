"""The local runtime's batch route (issue 17): ``LocalRuntime.submit(route=...)`` sends the
jobs routed to a provider's batch API to the batch route's queue, which none of the
emulator's pollers reads: the gatherer, on its schedule, takes them; the others run as
before."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from chatbatch.core.config import Config, Priority
from chatbatch.local.options import LocalOptions
from chatbatch.local.runtime import LocalRuntime

pytestmark = pytest.mark.slow


@pytest.fixture
def rt(tmp_path: Path, config: Config) -> Iterator[LocalRuntime]:
    """The shipped config with `low` allowed 24 h (the batch API's window)."""
    low = config.priorities[Priority.low].model_copy(update={"deadline_h": 24})
    routed = config.model_copy(update={"priorities": {**config.priorities, Priority.low: low}})
    config_file = tmp_path / "chatbatch.json"
    config_file.write_text(routed.model_dump_json())
    # the gatherer's schedule fires at the start, then hourly: it runs when the test says
    with LocalRuntime(LocalOptions(config_path=config_file, gather_every_s=3600)) as runtime:
        yield runtime


def _jobs(tmp_path: Path) -> Path:
    lines = [
        {"custom_id": "b1", "model": "gpt-4.1", "prompt": "one", "priority": "low"},
        {"custom_id": "b2", "model": "gpt-4.1", "prompt": "two", "priority": "low"},
        {"custom_id": "s1", "model": "deepseek-chat", "prompt": "three", "priority": "low"},
        {"custom_id": "s2", "model": "gpt-4.1", "prompt": "four"},
    ]
    path = tmp_path / "jobs.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def _depth(url: str) -> tuple[int, int]:
    """(visible, in flight) messages of a queue."""
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    attrs = boto3.client("sqs").get_queue_attributes(QueueUrl=url, AttributeNames=names)
    return tuple(int(attrs["Attributes"][n]) for n in names)  # type: ignore[return-value]


def test_batch_routed_jobs_wait_on_the_batch_queue_no_poller_reads(
    rt: LocalRuntime, tmp_path: Path
) -> None:
    batch_queue = rt.resources.batch_queue
    assert batch_queue is not None
    assert batch_queue not in {m.settings.queue_url for m in rt.mappings.values()}
    path = _jobs(tmp_path)
    plan = rt.submit(path, batch_id="auto", route="auto")
    assert (plan.routes["sync"].jobs, plan.routes["batch"].jobs) == (2, 2)
    info = rt.wait(plan, until=lambda info, _: info.finished >= 2)
    assert (info.succeeded, info.finished) == (2, 2)  # the synchronous two ran
    time.sleep(1.0)  # the pollers had time to take the batch queue's, if they read it
    assert _depth(batch_queue) == (2, 0)
    assert rt.batches.get("auto") is not None
    # the override reaches the runtime: the same file, every job synchronously
    synced = rt.submit(path, batch_id="sync", route="sync")
    assert synced.routes["batch"].jobs == 0
    info = rt.wait(synced)
    assert info.succeeded == 4
    assert _depth(batch_queue) == (2, 0)
    assert rt.gatherer is not None
    rt.gatherer.fire()  # its next period: the two go into a provider batch
    assert _depth(batch_queue) == (0, 0)
    batched = rt.batches.get("auto")
    assert batched is not None and batched.batched == 2  # in the provider batch now
