"""Only named producers write a batch (issue 20): a message for a batch from anyone but
its registrant (or the workers) is refused with its own error record, and the real job,
sent later by the registrant, still runs and is what `collect` returns.

The attacker is another role in moto (STS AssumeRole): the messages it sends carry its
``AROA…:SESSION`` sender id, as SQS stamps them (``local/moto_fixes.py``, fix 5).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from typer.testing import CliRunner

from chatbatch.cli.app import app
from chatbatch.client.submit import plan_file
from chatbatch.core.config import Config, Priority
from chatbatch.core.principals import caller_principal
from chatbatch.local.options import LocalOptions
from chatbatch.local.runtime import LocalRuntime
from chatbatch.state.batches import Batches, RegisteredByAnotherProducer

pytestmark = pytest.mark.slow
ATTACKER_ROLE = "arn:aws:iam::123456789012:role/Attacker"
REAL = "the real question"


@pytest.fixture
def rt(tmp_path: Path, config: Config) -> Iterator[LocalRuntime]:
    config_file = tmp_path / "chatbatch.json"
    config_file.write_text(config.model_dump_json())
    with LocalRuntime(LocalOptions(config_path=config_file, batch_id="victim")) as runtime:
        runtime.register_stack()
        yield runtime


def attacker(service: str) -> Any:
    creds = boto3.client("sts").assume_role(RoleArn=ATTACKER_ROLE, RoleSessionName="evil")
    keys = creds["Credentials"]
    return boto3.client(
        service,  # type: ignore[call-overload]
        aws_access_key_id=keys["AccessKeyId"],
        aws_secret_access_key=keys["SecretAccessKey"],
        aws_session_token=keys["SessionToken"],
    )


def send_as_attacker(rt: LocalRuntime, *bodies: dict[str, Any]) -> None:
    queue = rt.resources.queues[rt.config.defaults.priority]
    for body in bodies:
        attacker("sqs").send_message(QueueUrl=queue, MessageBody=json.dumps(body))


def refused(rt: LocalRuntime, batch: str, count: int) -> list[dict[str, Any]]:
    """The refusal records under ``refused/<batch>/``, once ``count`` are there."""
    s3 = boto3.client("s3")
    deadline = time.monotonic() + 30
    while True:
        listed = s3.list_objects_v2(Bucket=rt.resources.bucket, Prefix=f"refused/{batch}/")
        keys = [o["Key"] for o in listed.get("Contents", [])]
        if len(keys) >= count or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    return [json.loads(rt.store.get_text(key) or "{}") for key in keys]


def real_jobs(tmp_path: Path) -> Path:
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"custom_id": "line-1", "prompt": REAL, "max_tokens": 16}) + "\n")
    return jobs


def run_real_batch(rt: LocalRuntime, tmp_path: Path) -> dict[str, Any]:
    plan = rt.submit(real_jobs(tmp_path))
    info = rt.wait(plan)
    assert (info.succeeded, info.failed) == (1, 0)
    out = tmp_path / "collected.jsonl"
    args = ["collect", "victim", "-o", str(out), "--config", str(rt.options.config_path)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, (result.stdout, result.exception)
    (line,) = [json.loads(text) for text in out.read_text().splitlines()]
    return dict(line)


def assert_real_answer(rt: LocalRuntime, line: dict[str, Any]) -> None:
    assert line["custom_id"] == "line-1" and line["error"] is None
    assert rt.simulator is not None
    answer = line["response"]["body"]["choices"][0]["message"]["content"]
    assert "PWNED" not in answer and rt.simulator.stats().requests == 1


def test_a_job_planted_before_the_batch_is_refused_and_the_real_one_answers(
    rt: LocalRuntime, tmp_path: Path
) -> None:
    """The issue's attack: the victim's ids sent first, by someone else."""
    planted = {"batch_id": "victim", "custom_id": "line-1", "model": "gpt-4.1"}
    send_as_attacker(rt, planted | {"prompt": "say PWNED"}, planted | {"role": "nope"})
    records = refused(rt, "victim", 2)
    assert len(records) == 2
    for record in records:
        assert record["error"]["code"] == "refused_sender"
        assert (
            "not registered" in record["error"]["message"] and "AROA" in record["error"]["message"]
        )
    assert rt.store.get_error("victim", "line-1") is None  # the job's own record is free
    assert rt.batches.jobs("victim", ["line-1"])[0].state == "new"
    assert_real_answer(rt, run_real_batch(rt, tmp_path))


def test_a_registered_batch_refuses_other_senders(rt: LocalRuntime, tmp_path: Path) -> None:
    me = caller_principal(boto3.client("sts"))
    checksum = plan_file(real_jobs(tmp_path), rt.config, "victim", Priority.normal).checksum
    rt.batches.register("victim", total=1, priority="normal", checksum=checksum, registrant=me)
    send_as_attacker(rt, {"batch_id": "victim", "custom_id": "line-1", "prompt": "say PWNED"})
    (record,) = refused(rt, "victim", 1)
    message = record["error"]["message"]
    assert f"registered by {me}" in message and "AROA" in message
    # nor may another producer take the batch over by registering it again
    theirs = Batches(attacker("dynamodb"), rt.resources.table)
    with pytest.raises(RegisteredByAnotherProducer):
        theirs.register("victim", total=1, priority="low", checksum=checksum, registrant="AROAX")
    info = rt.batches.get("victim")
    assert info is not None and info.registrant == me
    assert_real_answer(rt, run_real_batch(rt, tmp_path))


def test_any_producer_may_send_to_the_days_batch(rt: LocalRuntime) -> None:
    send_as_attacker(rt, {"custom_id": "d1", "prompt": "hello"})
    deadline = time.monotonic() + 30
    while not (done := [b for b in rt.batches.list_all() if b.batch_id.startswith("daily-")]):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    while done[0].succeeded < 1:
        assert time.monotonic() < deadline
        time.sleep(0.1)
        done = [b for b in rt.batches.list_all() if b.batch_id.startswith("daily-")]
    assert rt.result(done[0].batch_id, "d1") is not None
