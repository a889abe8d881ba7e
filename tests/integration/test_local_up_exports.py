"""The lines `chatbatch local up` prints to export are all a plain SDK client needs: a
boto3 client built in a fresh process from exactly those variables (no region of its own,
no AWS config file) reaches the local queues, with no ``NoRegionError``."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
PRODUCER = """
import boto3
sqs = boto3.client("sqs")
urls = sqs.list_queues(QueueNamePrefix="chatbatch-")["QueueUrls"]
print(sqs.meta.region_name, len(urls))
"""


def bare_env(tmp_path: Path) -> dict[str, str]:
    """This environment without any AWS or chatbatch variable, and with no AWS config."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CHATBATCH_"))}
    missing = str(tmp_path / "none")
    return env | {"AWS_CONFIG_FILE": missing, "AWS_SHARED_CREDENTIALS_FILE": missing}


def printed_exports(up: subprocess.Popen[str], timeout_s: float = 60) -> dict[str, str]:
    """The ``export NAME=VALUE`` lines `local up` prints (a block of lines at once: read
    until its stdout is quiet for a second, never blocking on a line that does not come)."""
    assert up.stdout is not None
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in up.stdout or ()], daemon=True).start()
    exports: dict[str, str] = {}
    wait_s = timeout_s
    while True:
        try:
            line = lines.get(timeout=wait_s)
        except queue.Empty:
            return exports
        if line.startswith("export "):
            name, _, value = line.removeprefix("export ").strip().partition("=")
            exports[name] = value
            wait_s = 1.0


def test_a_plain_boto3_client_works_from_exactly_the_printed_exports(tmp_path: Path) -> None:
    env = bare_env(tmp_path)
    chatbatch = Path(sys.executable).parent / "chatbatch"
    up = subprocess.Popen(
        [chatbatch, "local", "up", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env | {"PYTHONUNBUFFERED": "1"},
        cwd=ROOT,
    )
    try:
        exports = printed_exports(up)
        producer = subprocess.run(
            [sys.executable, "-c", PRODUCER],
            check=False,
            capture_output=True,
            text=True,
            env=env | exports,
            timeout=60,
        )
        assert producer.returncode == 0, producer.stderr
        # 4 queues, 4 DLQs, the batch route's queue and DLQ
        assert producer.stdout.split() == [exports["AWS_REGION"], "10"]
        assert exports["AWS_DEFAULT_REGION"] == exports["AWS_REGION"]
    finally:
        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=30) == 0
