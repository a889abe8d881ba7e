"""Round trip: an OpenAI Batch input file -> jobs -> output lines in OpenAI's own shape."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from chatbatch.core.config import Config, Priority
from chatbatch.core.job_lines import parse_lines
from chatbatch.core.jobs import Job
from chatbatch.core.output_lines import JobFacts, OutputLine

# The output lines OpenAI's Batch API writes (platform docs, "Batch API" guide).
OPENAI_RESULT = {
    "id": "batch_req_123",
    "custom_id": "request-2",
    "response": {
        "status_code": 200,
        "request_id": "req_123",
        "body": {
            "id": "chatcmpl-123",
            "object": "chat.completion",
            "created": 1711652795,
            "model": "gpt-3.5-turbo-0125",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Hello."},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 22, "completion_tokens": 2, "total_tokens": 24},
        },
    },
    "error": None,
}
# A request the provider refused with an HTTP answer: in the output file, as answered.
OPENAI_REFUSED = {
    "id": "batch_req_789",
    "custom_id": "request-4",
    "response": {
        "status_code": 400,
        "request_id": "req_789",
        "body": {
            "error": {
                "message": "Invalid value for 'temperature'.",
                "type": "invalid_request_error",
                "param": "temperature",
                "code": "invalid_value",
            }
        },
    },
    "error": None,
}
# A request that never got an HTTP answer: in the error file.
OPENAI_ERROR = {
    "id": "batch_req_456",
    "custom_id": "request-3",
    "response": None,
    "error": {"code": "batch_expired", "message": "This request could not be executed."},
}

INPUT = [
    {
        "custom_id": "request-1",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": "gpt-4.1",
            "messages": [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "Hello world!"},
            ],
            "max_tokens": 1000,
        },
    },
    {
        "custom_id": "request-2",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "deepseek-chat", "messages": [{"role": "user", "content": "Hi"}]},
    },
]


def shape(value: Any) -> Any:
    """Keys and nesting, not values."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(v) for v in value[:1]]
    return type(value).__name__ if value is not None else None


def completion(job: Job) -> dict[str, Any]:
    body = json.loads(json.dumps(OPENAI_RESULT["response"]["body"]))
    body["choices"][0]["message"]["content"] = f"answer to {job.custom_id}"
    return body


def test_openai_batch_file_round_trips_to_openai_output_lines(config: Config):
    lines = [json.dumps(line) for line in INPUT]
    jobs = [job for _, job in parse_lines(lines, config)]
    assert all(isinstance(job, Job) for job in jobs)
    assert [j.model for j in jobs] == ["gpt-4.1", "deepseek-chat"]

    out = []
    for job in jobs:
        assert isinstance(job, Job)
        facts = JobFacts(
            batch_id="b1",
            priority=Priority.normal,
            model=job.model,
            cost_usd=Decimal("0.0001494"),
            latency_ms=12,
            attempts=1,
        )
        line = OutputLine.result(job, facts, completion(job), f"req_{job.custom_id}")
        out.append(json.loads(line.to_line()))

    for line, job in zip(out, jobs, strict=True):
        ours = dict(line)
        facts = ours.pop("chatbatch")
        assert shape(ours) == shape(OPENAI_RESULT)
        assert ours["custom_id"] == job.custom_id
        assert ours["response"]["body"]["choices"][0]["message"]["content"].endswith(job.custom_id)
        # the provider's x-request-id, not the body's chatcmpl id
        assert ours["response"]["request_id"] == f"req_{job.custom_id}"
        # money as an exact decimal string
        assert facts["cost_usd"] == "0.0001494" and facts["model"] == job.model
    assert out[0]["id"] != out[1]["id"]


def test_a_provider_http_error_is_an_output_line_with_its_answer_as_sent():
    """OpenAI writes a refused request as answered: status, request id, the body as the
    provider sent it (type and param kept), and ``error: null``."""
    body = json.loads(json.dumps(OPENAI_REFUSED["response"]["body"]))
    line = OutputLine.answered("b1", "request-4", 400, body, "req_789")
    assert line.is_result
    out = json.loads(line.to_line())
    out.pop("chatbatch")
    assert shape(out) == shape(OPENAI_REFUSED)
    assert out["response"] == OPENAI_REFUSED["response"] and out["error"] is None


def test_error_line_has_openai_error_shape():
    line = OutputLine.failure("b1", "request-3", "invalid_job", "messages: ...")
    assert not line.is_result
    out = json.loads(line.to_line())
    out.pop("chatbatch")
    assert shape(out) == shape(OPENAI_ERROR)
    assert out["error"] == {"code": "invalid_job", "message": "messages: ..."}


def test_ids_are_deterministic_so_retries_overwrite():
    a = OutputLine.failure("b1", "x", "c", "m")
    b = OutputLine.failure("b1", "x", "c", "m")
    assert a.id == b.id != OutputLine.failure("b2", "x", "c", "m").id
