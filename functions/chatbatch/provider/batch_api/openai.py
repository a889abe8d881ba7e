"""OpenAI's Batch API (``OpenAIBatchClient``): a part is uploaded as a file (``POST
/files``, ``purpose=batch``), then a batch is created over it (``POST /batches``,
``endpoint`` ``/v1/chat/completions``, ``completion_window`` ``24h``); ``GET
/batches/{id}`` polls it, ``GET /batches`` lists them (newest first, ``after`` the last id
of the page before: ``HttpBatchClient.listed``; a part's batch is the one whose
``metadata`` names it), ``POST /batches/{id}/cancel`` cancels it, and once it has ended
(``completed``, ``expired``, ``cancelled``, ``failed``) its output file (200s) and error
file (refused lines, and lines never run) are read (``GET /files/{id}/content``).

A result line is ``{"id", "custom_id", "response": {"status_code", "request_id",
"body"} | null, "error": {"code", "message"} | null}``: a 200 is the chat.completion
the synchronous endpoint answers; a 4xx other than 408/409/429 is the line refused for good;
429, 5xx and an ``error`` without a response (``batch_expired``, ``batch_cancelled``) go
back to the synchronous path; a job with no line at all (a batch that failed) too.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from chatbatch.core.jobs import CHAT_URL
from chatbatch.core.pricing import Usage
from chatbatch.provider.batch_api.common import (
    BatchApiKind,
    BatchPart,
    BatchState,
    JobOutcome,
    MalformedResult,
    transient_status,
)
from chatbatch.provider.batch_api.http import HttpBatchClient
from chatbatch.provider.batch_api.results import ResultLines, missing_outcomes
from chatbatch.provider.errors import error_text

COMPLETION_WINDOW = "24h"
ENDED = frozenset({"completed", "expired", "cancelled", "failed"})


def state_of(raw: dict[str, Any]) -> BatchState:
    status = str(raw.get("status"))
    return BatchState(
        id=str(raw.get("id")),
        status=status,
        ended=status in ENDED,
        counts=dict(raw.get("request_counts") or {}),
        created_at=float(raw.get("created_at") or 0),
        metadata={str(k): str(v) for k, v in (raw.get("metadata") or {}).items()},
        raw=raw,
    )


class OpenAIBatchClient(HttpBatchClient):
    """One kind openai provider's Files + Batches endpoints."""

    path = "/batches"
    cursor = "after"
    state = staticmethod(state_of)

    api: ClassVar[BatchApiKind] = "openai"

    def create(self, part: BatchPart, metadata: dict[str, str] | None = None) -> BatchState:
        data = b"".join(
            json.dumps(r.line, separators=(",", ":")).encode() + b"\n" for r in part.requests
        )
        files = {"file": ("chatbatch.jsonl", data, "application/jsonl")}
        uploaded = self.http.call("POST", "/files", files=files, data={"purpose": "batch"})
        body: dict[str, Any] = {
            "input_file_id": uploaded.json()["id"],
            "endpoint": CHAT_URL,
            "completion_window": COMPLETION_WINDOW,
        }
        if metadata:
            body["metadata"] = metadata
        return state_of(self.http.call("POST", "/batches", json=body).json())

    def results(self, batch_id: str, part: BatchPart) -> list[JobOutcome]:
        state = self.ended(batch_id)
        lines = ResultLines(batch_id, part)
        for name in ("output_file_id", "error_file_id"):
            file_id = state.raw.get(name)
            if file_id:
                content = self.http.call("GET", f"/files/{file_id}/content").content
                lines.read(content, f"{name.removesuffix('_id')} {file_id}", line_outcome)
        return lines.outcomes + missing_outcomes(lines, f"the batch ended {state.status}")


def line_outcome(item: dict[str, Any], batch_id: str, custom_id: str, where: str) -> JobOutcome:
    """One output or error file line -> the job's outcome (the module docstring's rules)."""
    response = item.get("response")
    error = item.get("error")
    if isinstance(response, dict) and isinstance(response.get("status_code"), int):
        status, body = response["status_code"], response.get("body")
        if status == 200 and isinstance(body, dict) and isinstance(body.get("choices"), list):
            usage = body.get("usage")
            return JobOutcome(
                batch_id,
                custom_id,
                "succeeded",
                body=body,
                usage=Usage.from_api(usage) if usage else None,
            )
        if status != 200:
            message, _ = error_text(body)
            if transient_status(status):
                return JobOutcome(batch_id, custom_id, "retry_sync", status=status, message=message)
            errors = body if isinstance(body, dict) else {"error": {"message": message}}
            return JobOutcome(
                batch_id, custom_id, "failed", status=status, error=errors, message=message
            )
    elif isinstance(error, dict):
        code, said = error.get("code"), error.get("message")
        why = f"{code}: {said}" if code else str(said)
        return JobOutcome(batch_id, custom_id, "retry_sync", message=why)
    raise MalformedResult(f"{where}: neither a response with a chat.completion nor an error")
