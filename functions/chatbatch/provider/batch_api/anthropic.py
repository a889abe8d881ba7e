"""Anthropic's Message Batches (``AnthropicBatchClient``): a part is created in one
request (``POST /messages/batches`` ``{"requests": [{"custom_id", "params"}]}``), polled
(``GET /messages/batches/{id}``: ``processing_status`` ``in_progress``, ``canceling``,
``ended``), cancelled (``POST .../{id}/cancel``) and, once ended, its results read
(``GET .../{id}/results``, JSONL); ``GET /messages/batches`` lists them (newest first,
``after_id`` the last id of the page before: ``HttpBatchClient.listed``), and a batch's
first result line names its part (``first_custom_id``).

A result line is ``{"custom_id", "result": {"type": ...}}``: ``succeeded`` carries the
Message the synchronous ``/messages`` answers, with its usage (the outcome's body is that
Message, as the chat client's ``Completion`` is: the worker stores it with
``translate.result_body``, ``worker.batch_jobs.stored``); ``errored`` carries Anthropic's error body
``{"type": "error", "error": {"type", "message"}}``: a request error (``invalid_request_error``
and the other 4xx types) fails for good, an ``api_error``, ``overloaded_error`` or any other
goes back to the synchronous path, as do ``canceled`` and ``expired``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, ClassVar

from chatbatch.core.pricing import Usage
from chatbatch.provider.batch_api.common import (
    BatchApiKind,
    BatchPart,
    BatchState,
    JobOutcome,
    MalformedResult,
)
from chatbatch.provider.batch_api.http import HttpBatchClient
from chatbatch.provider.batch_api.results import ResultLines, keyed_line, missing_outcomes

PATH = "/messages/batches"
# Anthropic's error types that are the request's fault, with their HTTP status
REQUEST_ERRORS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
}
UNRUN = frozenset({"canceled", "expired"})


def state_of(raw: dict[str, Any]) -> BatchState:
    status = str(raw.get("processing_status"))
    return BatchState(
        id=str(raw.get("id")),
        status=status,
        ended=status == "ended",
        counts=dict(raw.get("request_counts") or {}),
        created_at=_epoch(raw.get("created_at")),
        metadata={},
        raw=raw,
    )


def _epoch(moment: Any) -> float:
    """An RFC 3339 time (``2024-08-20T18:37:24.100435Z``) -> epoch seconds; 0 if none."""
    if not isinstance(moment, str) or not moment:
        return 0.0
    return dt.datetime.fromisoformat(moment).timestamp()


class AnthropicBatchClient(HttpBatchClient):
    """One kind anthropic provider's Message Batches endpoints."""

    path = PATH
    cursor = "after_id"
    state = staticmethod(state_of)

    api: ClassVar[BatchApiKind] = "anthropic"

    def create(self, part: BatchPart, metadata: dict[str, str] | None = None) -> BatchState:
        """(Message Batches have no metadata: ``metadata`` is not sent.)"""
        body = {"requests": [r.line for r in part.requests]}
        return state_of(self.http.call("POST", PATH, json=body).json())

    def first_custom_id(self, batch_id: str) -> str | None:
        """The ``custom_id`` of the first result line of an ended batch (None: it has no
        line), read off the stream, which is then closed: Message Batches carry no
        metadata, so a run that lost a batch's id matches it to its part by the part's
        prefix on its custom_ids (every job is in one part only, so one line tells).
        A batch still running is a ``BatchApiError`` (the provider refuses its results)."""
        with self.http.stream("GET", f"{PATH}/{batch_id}/results") as response:
            for number, text in enumerate(response.iter_lines(), start=1):
                if text.strip():
                    where = f"provider batch {batch_id}, results, line {number}"
                    return keyed_line(text, where)[1]
        return None

    def results(self, batch_id: str, part: BatchPart) -> list[JobOutcome]:
        state = self.ended(batch_id)
        content = self.http.call("GET", f"{PATH}/{batch_id}/results").content
        lines = ResultLines(batch_id, part)

        def outcome(item: dict[str, Any], batch: str, custom_id: str, where: str) -> JobOutcome:
            result = item.get("result")
            kind = result.get("type") if isinstance(result, dict) else None
            if kind == "succeeded" and isinstance(result, dict):
                message = result.get("message")
                if not isinstance(message, dict) or not isinstance(message.get("content"), list):
                    raise MalformedResult(f"{where}: a succeeded result without a Message")
                usage = message.get("usage") or {}
                billed = (
                    Usage.from_anthropic(usage) if usage.get("input_tokens") is not None else None
                )
                return JobOutcome(batch, custom_id, "succeeded", body=message, usage=billed)
            if kind == "errored" and isinstance(result, dict):
                return _errored(result.get("error"), batch, custom_id)
            if kind in UNRUN:
                return JobOutcome(batch, custom_id, "retry_sync", message=f"{kind}")
            raise MalformedResult(f"{where}: a result of unknown type {kind!r}")

        lines.read(content, "results", outcome)
        return lines.outcomes + missing_outcomes(lines, f"the batch ended {state.status}")


def _errored(error: Any, batch_id: str, custom_id: str) -> JobOutcome:
    inner = error.get("error") if isinstance(error, dict) else None
    detail = inner if isinstance(inner, dict) else error if isinstance(error, dict) else {}
    kind, message = str(detail.get("type")), str(detail.get("message") or detail)
    status = REQUEST_ERRORS.get(kind)
    if status is None:
        return JobOutcome(batch_id, custom_id, "retry_sync", message=f"{kind}: {message}")
    body = error if isinstance(error, dict) else {"type": "error", "error": detail}
    return JobOutcome(batch_id, custom_id, "failed", status=status, error=body, message=message)
