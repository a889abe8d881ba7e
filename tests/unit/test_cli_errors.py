"""The CLI's failures a user meets first: one line that says what to do, an exit code
scripts can trust (2 usage, 1 failure), and no traceback unless `--debug`."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError
from typer.testing import CliRunner, Result

from chatbatch.cli import admin
from chatbatch.cli.app import app
from chatbatch.cli.status import batch_status
from chatbatch.cli.submit import MAX_SHOWN_ERRORS
from chatbatch.state.batches import BatchInfo

ROOT = Path(__file__).resolve().parents[2]
CONFIG = str(ROOT / "chatbatch.toml")
runner = CliRunner()


def invoke(*args: str, code: int) -> Result:
    result = runner.invoke(app, [*args, "--config", CONFIG])
    assert result.exit_code == code, (result.stdout, result.stderr, result.exception)
    return result


def one_line(result: Result) -> str:
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.fixture
def no_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No credentials anywhere, and nothing that would look for them on the network."""
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_ENDPOINT_URL",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_REGION", "us-east-1")


def test_a_missing_file_or_a_bad_batch_id_is_a_usage_error(tmp_path: Path) -> None:
    assert "no such file" in one_line(invoke("submit", str(tmp_path / "nope.jsonl"), code=2))
    assert "--batch-id" in one_line(invoke("submit", CONFIG, "--batch-id", "a/b", code=2))
    bad = runner.invoke(app, ["status", "--config", str(tmp_path / "none.toml")])
    assert bad.exit_code == 2 and "config file not found" in one_line(bad)


def test_every_invalid_line_is_listed_up_to_a_cap(tmp_path: Path, no_aws: None) -> None:
    path = tmp_path / "bad.jsonl"
    lines = [
        json.dumps({"custom_id": f"x{i}", "prompt": "p", "temperature": 5}) for i in range(130)
    ]
    path.write_text("\n".join(lines) + "\n")
    result = invoke("submit", str(path), code=1)
    err = result.stderr.splitlines()
    listed = [line for line in err if line.startswith("line ")]
    assert listed[0].startswith("line 1, job 'x0': temperature: must be at most 2")
    assert len(listed) == MAX_SHOWN_ERRORS and listed[-1].startswith("line 100,")
    assert "... and 30 more invalid line(s)" in err
    assert err[-1] == (
        f"error: {path}: 130 invalid line(s) of 130; nothing was sent (fix them, or pass "
        "--skip-invalid to send the valid ones)"
    )


def test_a_dry_run_needs_no_aws(no_aws: None) -> None:
    jobs = str(ROOT / "examples" / "jobs.jsonl")
    plan = json.loads(
        invoke("submit", jobs, "--dry-run", "--skip-invalid", "--json", code=0).stdout
    )
    assert plan["status"] == "dry_run" and plan["sent"] == 0 and plan["valid"] > 0


def test_no_credentials(no_aws: None) -> None:
    message = one_line(invoke("status", code=1))
    assert "no AWS credentials found" in message and "aws sso login" in message


def test_an_unreachable_endpoint(monkeypatch: pytest.MonkeyPatch, no_aws: None) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    message = one_line(invoke("status", code=1))
    assert "cannot reach http://127.0.0.1:9" in message and "chatbatch local up" in message


@pytest.mark.filterwarnings("ignore:Tried to parse")
def test_no_stack_and_a_stack_that_is_not_chatbatch(aws: None) -> None:
    message = one_line(invoke("collect", "b1", code=1))
    assert message.startswith("error: no stack named 'chatbatch' in us-east-1")
    boto3.client("cloudformation").create_stack(
        StackName="other",
        TemplateBody=json.dumps(
            {"Resources": {"H": {"Type": "AWS::CloudFormation::WaitConditionHandle"}}}
        ),
    )
    message = one_line(invoke("status", "--stack", "other", code=1))
    assert "'other' in us-east-1 is not a chatbatch deployment (outputs missing: TableName" in (
        message
    )


def raising(err: Exception) -> object:
    def connect(*_: object) -> object:
        raise err

    return connect


def test_expired_credentials_and_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    expired = ClientError(
        {"Error": {"Code": "ExpiredToken", "Message": "The security token has expired"}},
        "DescribeStacks",
    )
    monkeypatch.setattr(admin, "connect", raising(expired))
    message = one_line(invoke("cancel", "b1", code=1))
    assert "credentials have expired (ExpiredToken)" in message and "aws sso login" in message
    debug = runner.invoke(app, ["--debug", "cancel", "b1", "--config", CONFIG])
    assert debug.exit_code == 1 and debug.exception is expired


def test_an_unexpected_error_points_at_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(admin, "connect", raising(RuntimeError("boom")))
    message = one_line(invoke("redrive", code=1))
    assert (
        message == "error: unexpected RuntimeError: boom (run `chatbatch --debug ...` for details)"
    )


def test_local_simulator_takes_the_simulators_own_options() -> None:
    result = runner.invoke(app, ["local", "simulator", "--help"])
    assert result.exit_code == 0 and "--latency-ms" in result.stdout and "--fault" in result.stdout
    bad = runner.invoke(app, ["local", "simulator", "--fault", "teapot=1"])
    assert bad.exit_code == 2


def test_batch_status_counts_speed_and_eta() -> None:
    info = BatchInfo(
        batch_id="b", total=100, succeeded=40, failed=6, cancelled_jobs=4, deferred=5, created=975.0
    )
    status = batch_status(info, in_flight=8, now=1000.0)
    assert (status.pending, status.running, status.queued) == (45, 8, 37)
    assert status.jobs_per_s == 2.0 and status.eta_s == 22.5 and not status.done
    idle = batch_status(
        info.model_copy(update={"succeeded": 0, "failed": 0, "cancelled_jobs": 0}), 0, 1000.0
    )
    assert idle.jobs_per_s is None and idle.eta_s is None
    # every job not final waits outside the workers: nothing pending, but not done (a
    # throttled job is back within seconds; --watch and scripts wait for every job final)
    waiting = batch_status(info.model_copy(update={"succeeded": 80, "throttled": 5}), 0, 1000.0)
    assert (waiting.pending, waiting.done) == (0, False)
    assert info.model_copy(update={"succeeded": 80, "throttled": 5}).unfinished == 10  # cancel's
    assert BatchInfo(batch_id="open").unfinished is None
    final = info.model_copy(update={"succeeded": 90, "deferred": 0})
    assert batch_status(final, 0, 1000.0).done
