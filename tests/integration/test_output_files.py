"""A local run's output and error files, line by line, read with the openai SDK's own types.

The results file holds what got an HTTP answer: answers (``ChatCompletion``) and the
provider's refusals (its status, its ``x-request-id``, its body as sent: ``ErrorObject``),
each with ``error: null``. The error file holds what never got one (``response: null``,
``error``: a ``BatchError`` with a code and a message). openai==3.57.0 has no type for a
whole batch output line, so ``ResultLine`` and ``ErrorLine`` pin the line's own keys
(exactly these, nothing missing, nothing else) and the SDK's types validate what is inside.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

from openai.types import BatchError
from openai.types.chat import ChatCompletion
from openai.types.shared import ErrorObject
from pydantic import BaseModel, ConfigDict

from chatbatch.local.options import LocalOptions
from chatbatch.local.runtime import LocalRuntime


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Facts(BaseModel):
    """The ``chatbatch`` extension: money as an exact decimal string."""

    model_config = ConfigDict(strict=True)

    batch_id: str
    cost_usd: str


class Response(Strict):
    status_code: int
    request_id: str
    body: dict[str, Any]


class ResultLine(Strict):
    """A line of OpenAI's batch output file."""

    id: str
    custom_id: str
    response: Response
    error: None
    chatbatch: Facts


class ErrorLine(Strict):
    """A line of OpenAI's batch error file."""

    id: str
    custom_id: str
    response: None
    error: BatchError
    chatbatch: Facts | None


class Refusal(Strict):
    """The body of a provider's error answer, as OpenAI sends it."""

    error: ErrorObject


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def jobs(tmp_path: Path) -> Path:
    lines = [json.dumps({"custom_id": f"ok{i}", "prompt": f"say {i}"}) for i in range(6)]
    lines.insert(2, '{"custom_id": "broken", "prompt": ')  # not JSON
    lines.insert(4, json.dumps({"custom_id": "no-prompt"}))  # no messages
    path = tmp_path / "jobs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_every_line_of_a_local_run_reads_as_openai_batch_output(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with LocalRuntime(LocalOptions(timeout_s=60)) as rt:
        assert rt.simulator is not None
        rt.simulator.inject("400", "400")  # the first two calls are refused
        summary = rt.run(jobs(tmp_path), out)
    assert (summary.succeeded, summary.failed) == (4, 4)

    results = [ResultLine.model_validate(line) for line in read_lines(out / "results.jsonl")]
    errors = [ErrorLine.model_validate(line) for line in read_lines(out / "errors.jsonl")]
    assert sorted(r.custom_id for r in results) == [f"ok{i}" for i in range(6)]
    assert [e.custom_id for e in errors] == [
        "line-3",
        "no-prompt",
    ]  # an unreadable line: its number

    answered = [r for r in results if r.response.status_code == 200]
    refused = [r for r in results if r.response.status_code == 400]
    assert (len(answered), len(refused)) == (4, 2)
    for line in answered:
        body = ChatCompletion.model_validate(line.response.body)
        # the provider's x-request-id header, not the body's chatcmpl id
        assert line.response.request_id.startswith("req_") and body.id.startswith("chatcmpl-")
        assert Decimal(line.chatbatch.cost_usd) > 0
    for line in refused:
        error = Refusal.model_validate(line.response.body).error
        assert (error.type, error.param, error.code) == (
            "invalid_request_error",
            "temperature",
            "invalid_value",
        )
        assert line.response.request_id.startswith("req_")
        assert Decimal(line.chatbatch.cost_usd) == 0
    ids = [r.response.request_id for r in results]
    assert len(set(ids)) == len(ids), "each answer's own x-request-id"
    for line in errors:
        assert line.error.code == "invalid_job" and line.error.message
    # summary.json (and local run --json): money as exact decimal strings too
    summary_file = json.loads((out / "summary.json").read_text())
    assert isinstance(summary_file["cost_usd"], str) and summary_file["estimated_usd"] == "0"
    assert Decimal(summary_file["cost_usd"]) == sum(Decimal(r.chatbatch.cost_usd) for r in results)
