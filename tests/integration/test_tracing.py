"""Tracing as deployed: the worker's X-Ray documents, caught by a UDP "daemon" on loopback.

`chatbatch local run` runs in a child process whose environment is what Lambda gives a
function with active tracing (``LAMBDA_TASK_ROOT``, ``_X_AMZN_TRACE_ID``,
``AWS_XRAY_DAEMON_ADDRESS``), so Powertools' Tracer and the X-Ray SDK behave as they do
in Lambda and send every finished subsegment over UDP to the socket this test listens on.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chatbatch.local.runtime import LOCAL_KEY

pytestmark = pytest.mark.slow
JOBS = 12
CHATBATCH = str(Path(sys.executable).parent / "chatbatch")
SECRET = "zebra-umbrella-4711"  # in every prompt: must never reach a trace


class Daemon:
    """An X-Ray daemon stand-in: collects the JSON documents sent to it."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)  # lose nothing
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.raw: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        host, port = self.sock.getsockname()
        return f"{host}:{port}"

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.raw.append(self.sock.recv(65536))
            except TimeoutError:
                continue

    def close(self) -> list[dict[str, Any]]:
        self._stop.set()
        self._thread.join()
        self.sock.close()
        # each datagram: a header line, then one segment or subsegment document
        return [json.loads(d.split(b"\n", 1)[1]) for d in self.raw]


Doc = dict[str, Any]


def _walk(doc: Doc, parent: Doc | None = None) -> Iterator[tuple[Doc, Doc | None]]:
    yield doc, parent
    for child in doc.get("subsegments", []):
        yield from _walk(child, doc)


def spans(docs: list[Doc]) -> list[tuple[Doc, Doc | None]]:
    """Every subsegment with its parent. The SDK sends a finished subtree nested in its
    parent's document, or on its own naming its parent (``parent_id``) when it streams
    the finished children of a subsegment still open."""
    found = [pair for d in docs for pair in _walk(d)]
    by_id = {doc["id"]: doc for doc, _ in found}
    return [(doc, parent or by_id.get(doc.get("parent_id", ""))) for doc, parent in found]


def traced_local_run(
    jobs: Path, env: dict[str, str], *flags: str
) -> tuple[dict[str, Any], list[Doc]]:
    """`chatbatch local run` in a child process with ``env``; its summary and what a
    daemon on loopback received (``AWS_XRAY_DAEMON_ADDRESS`` is set here)."""
    daemon = Daemon()
    env = {**env, "AWS_XRAY_DAEMON_ADDRESS": daemon.address}
    out = jobs.parent / "out"
    command = [CHATBATCH, "local", "run", str(jobs), "--out", str(out), "--json", *flags]
    try:
        run = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=240, check=False
        )
    finally:
        docs = daemon.close()
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout), docs


@pytest.fixture(scope="module")
def traced_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Doc], str]:
    work = tmp_path_factory.mktemp("traced")
    jobs = work / "jobs.jsonl"
    jobs.write_text(
        "".join(
            json.dumps({"custom_id": f"t-{i:02d}", "prompt": f"{SECRET} question {i}"}) + "\n"
            for i in range(JOBS)
        )
    )
    trace_id = "1-5f000000-0123456789abcdef01234567"
    lambda_env = {
        "LAMBDA_TASK_ROOT": str(work),
        "POWERTOOLS_TRACE_DISABLED": "false",
        "_X_AMZN_TRACE_ID": f"Root={trace_id};Parent=53995c3f42cd8ad8;Sampled=1",
    }
    faults = ("--sim-latency-ms", "20", "--sim-faults", '{"429": 0.3}', "--seed", "7")
    summary, docs = traced_local_run(jobs, {**os.environ, **lambda_env}, *faults)
    assert summary["succeeded"] == JOBS
    return docs, trace_id


def test_each_invocation_is_traced_with_a_job_span_per_record(
    traced_run: tuple[list[Doc], str],
) -> None:
    docs, trace_id = traced_run
    assert docs and {d["trace_id"] for d in docs} == {trace_id}
    handlers = [d for d in docs if d["name"] == "## handler"]
    assert handlers
    for handler in handlers:
        assert "ColdStart" in handler["annotations"]
    jobs = [(doc, parent) for doc, parent in spans(docs) if doc["name"] == "job"]
    # one span per job (a handed-back job would have one per delivery; none is here)
    by_id = {doc["annotations"]["custom_id"]: (doc, parent) for doc, parent in jobs}
    assert len(jobs) == JOBS and set(by_id) == {f"t-{i:02d}" for i in range(JOBS)}
    for doc, parent in by_id.values():
        assert parent is not None and parent["name"] == "## handler"
        notes = doc["annotations"]
        assert notes["outcome"] == "succeeded"
        assert notes["priority"] == "normal" and notes["model"] and notes["batch_id"]
        assert doc["start_time"] <= doc["end_time"]
        assert parent["start_time"] <= doc["start_time"] and doc["end_time"] <= parent["end_time"]


def test_the_provider_call_is_a_span_of_its_job_with_attempts_and_429s(
    traced_run: tuple[list[Doc], str],
) -> None:
    docs, _ = traced_run
    calls = [(doc, parent) for doc, parent in spans(docs) if doc["name"] == "provider"]
    assert len(calls) == JOBS
    for doc, parent in calls:
        assert parent is not None and parent["name"] == "job"
        assert doc["namespace"] == "remote"
        assert doc["http"]["response"]["status"] == 200
        assert doc["http"]["request"]["url"].endswith("/chat/completions")
        assert doc["annotations"]["attempts"] == 1 + doc["annotations"]["rate_limited"]
    # 30% of the simulator's answers are 429s: some calls needed more than one attempt
    assert sum(doc["annotations"]["rate_limited"] for doc, _ in calls) > 0


def test_aws_calls_are_traced_without_job_contents_or_the_key(
    traced_run: tuple[list[Doc], str],
) -> None:
    docs, _ = traced_run
    services = {doc["name"] for doc, _ in spans(docs) if doc.get("namespace") == "aws"}
    assert {"dynamodb", "s3", "sqs"} <= services
    text = json.dumps(docs)
    assert SECRET not in text
    assert LOCAL_KEY not in text


def test_the_local_runtime_does_not_trace_unless_asked(tmp_path: Path) -> None:
    """Without the Lambda-like environment the Tracer is off: nothing is sent."""
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"custom_id": "quiet", "prompt": "hello"}) + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POWERTOOLS_", "_X_AMZN"))}
    summary, docs = traced_local_run(jobs, env, "--sim-latency-ms", "0")
    assert summary["succeeded"] == 1
    assert docs == []
