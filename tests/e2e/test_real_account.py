"""The whole product against a real AWS account and a real provider: deploy the stack
(``cdk deploy``), store the DeepSeek key, submit README's 20 example jobs, collect them,
check ``costs`` against the answers' usage at the configured prices, and destroy the stack
with the data it keeps on purpose (bucket, log bucket, table).

Skipped unless asked for (``CHATBATCH_E2E=1``, which ``make e2e`` sets) with AWS
credentials, a region and ``DEEPSEEK_API_KEY`` present: it takes ~15 minutes and costs a
few cents. The stack gets a name of its own (``chatbatch-e2e-<random>``), so it never
touches a deployment of the account.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import pytest
from typer.testing import CliRunner

from chatbatch.cli.app import app
from chatbatch.core.config import Config, load_config
from chatbatch.core.pricing import Usage, cost

ROOT = Path(__file__).resolve().parents[2]
JOBS = ROOT / "examples" / "first-batch.jsonl"  # README's walkthrough file: 20 DeepSeek jobs
NEEDS = (
    "CHATBATCH_E2E=1 (or run `make e2e`), AWS credentials and a region (AWS_PROFILE or "
    "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, and AWS_REGION), DEEPSEEK_API_KEY, Node 20 "
    "(npx) and AWS_ENDPOINT_URL unset; it deploys a stack of its own, spends a few cents "
    "and destroys it"
)
DEPLOY_TIMEOUT_S = 1800
ANSWER_TIMEOUT_S = 600


def missing() -> str | None:
    """What is missing to run against a real account (None: nothing)."""
    if os.environ.get("CHATBATCH_E2E") != "1":
        return "CHATBATCH_E2E is not 1"
    if os.environ.get("AWS_ENDPOINT_URL"):
        return "AWS_ENDPOINT_URL is set (a local endpoint, not an account)"
    if not os.environ.get("DEEPSEEK_API_KEY", "").strip():
        return "DEEPSEEK_API_KEY is not set"
    if shutil.which("npx") is None:
        return "npx (Node 20) is not on PATH"
    session = boto3.Session()
    if session.get_credentials() is None:
        return "no AWS credentials"
    if session.region_name is None:
        return "no AWS region"
    return None


pytestmark = [
    pytest.mark.skipif(
        missing() is not None, reason=f"real-account test: needs {NEEDS} ({missing()})"
    ),
    pytest.mark.timeout(2 * DEPLOY_TIMEOUT_S + ANSWER_TIMEOUT_S),  # deploy + answers + destroy
]
runner = CliRunner()


def cli(*args: str) -> Any:
    """``chatbatch ARGS --json``, parsed; the command must succeed."""
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, (args, result.stdout, result.stderr, result.exception)
    return json.loads(result.stdout)


def cdk(*args: str, config_file: Path) -> None:
    """``npx aws-cdk@2 ARGS -c config=FILE`` from the project root, with this Python first
    on PATH (cdk.json runs ``python3 app.py``)."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    command = ["npx", "--yes", "aws-cdk@2", *args, "-c", f"config={config_file}"]
    subprocess.run(
        command,
        check=True,
        cwd=ROOT,
        env=os.environ | {"PATH": path},
        timeout=DEPLOY_TIMEOUT_S,
    )


def stack_outputs(stack: str) -> dict[str, str]:
    described = boto3.client("cloudformation").describe_stacks(StackName=stack)
    return {o["OutputKey"]: o["OutputValue"] for o in described["Stacks"][0].get("Outputs", [])}


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Config]]:
    """A stack of its own, deployed with the DeepSeek key stored; destroyed afterwards,
    with the bucket, the log bucket and the table the stack keeps on purpose."""
    stack = f"chatbatch-e2e-{secrets.token_hex(3)}"
    config_file = tmp_path_factory.mktemp("e2e") / "chatbatch.toml"
    text = (ROOT / "chatbatch.toml").read_text()
    config_file.write_text(re.sub(r'(?m)^stack_name = ".*"$', f'stack_name = "{stack}"', text))
    config = load_config(config_file)
    outputs: dict[str, str] = {}
    try:
        cdk("deploy", "--require-approval", "never", config_file=config_file)
        outputs = stack_outputs(stack)
        boto3.client("secretsmanager").put_secret_value(
            SecretId=outputs["SecretArnDeepseek"],
            SecretString=os.environ["DEEPSEEK_API_KEY"].strip(),
        )
        time.sleep(10)  # a worker started before the put would hold the placeholder ≤ 5 min
        yield config_file, config
    finally:
        cdk("destroy", "--force", config_file=config_file)
        delete_kept_data(outputs)


def delete_kept_data(outputs: dict[str, str]) -> None:
    """Empty and delete the data bucket and its access-log bucket, delete the table and
    the worker's log group: what the stack keeps on purpose."""
    s3 = boto3.resource("s3")
    bucket = outputs.get("BucketName")
    if bucket:
        logging = boto3.client("s3").get_bucket_logging(Bucket=bucket)
        log_bucket = logging.get("LoggingEnabled", {}).get("TargetBucket")
        for name in [bucket, log_bucket]:
            if name:
                s3.Bucket(name).object_versions.delete()
                s3.Bucket(name).delete()
    if outputs.get("TableName"):
        boto3.client("dynamodb").delete_table(TableName=outputs["TableName"])
    if outputs.get("WorkerFunctionName"):
        logs = boto3.client("logs")
        with contextlib.suppress(logs.exceptions.ResourceNotFoundException):
            logs.delete_log_group(logGroupName=f"/aws/lambda/{outputs['WorkerFunctionName']}")


def test_twenty_jobs_through_a_deployed_stack(deployed: tuple[Path, Config], tmp_path: Path):
    config_file, config = deployed
    given = ["--config", str(config_file)]
    submitted = cli("submit", str(JOBS), *given)
    assert (submitted["status"], submitted["sent"]) == ("sent", 20)
    batch = submitted["batch_id"]
    deadline = time.monotonic() + ANSWER_TIMEOUT_S
    while not (status := cli("status", batch, *given))["done"]:
        assert time.monotonic() < deadline, f"not done in {ANSWER_TIMEOUT_S} s: {status}"
        time.sleep(10)
    results = tmp_path / "results.jsonl"
    collected = cli("collect", batch, "-o", str(results), *given)
    assert (collected["results"], collected["errors"]) == (20, 0), collected
    lines = [json.loads(line) for line in results.open()]
    assert sorted(line["custom_id"] for line in lines) == [f"first-{i:04d}" for i in range(1, 21)]
    assert all(line["response"]["status_code"] == 200 for line in lines)
    # each answer's cost is its usage at the configured prices; `costs` adds them up
    price = config.models["deepseek-chat"]
    booked = [Decimal(line["chatbatch"]["cost_usd"]) for line in lines]
    priced = [cost(Usage.from_api(line["response"]["body"]["usage"]), price) for line in lines]
    assert booked == priced
    report = cli("costs", "--batch", batch, *given)
    assert report["jobs"] == 20
    assert abs(Decimal(report["total_usd"]) - sum(priced, Decimal(0))) < Decimal("1e-9")
