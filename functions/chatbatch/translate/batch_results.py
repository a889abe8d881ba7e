"""A batch submitted in Anthropic's form, written as Anthropic's results lines.

Every stored line (``core.output_lines.OutputLine``, OpenAI's shape) becomes one
``{"custom_id", "result": {...}, "chatbatch": {...}}`` line, all in ONE results file, as
Anthropic writes them:

- an answer -> ``{"type": "succeeded", "message": <Anthropic Message>}``;
- the provider's HTTP error answer -> ``{"type": "errored", "error": {"type": "error",
  "error": {"type": <Anthropic's error type for the status>, "message": ...}}}``;
- a failure without an HTTP answer -> ``canceled`` (batch cancelled), ``expired`` (batch
  expired), else ``errored`` with the error type nearest chatbatch's code.

The ``chatbatch`` extension keeps chatbatch's facts (money as exact decimal strings), its
own ``code``, and for an HTTP error the ``status_code``, ``request_id`` and body as sent.
An answer whose ``finish_reason`` no Anthropic stop_reason means (its Message says
``end_turn``) keeps it there as ``finish_reason``. An answer that came without usage
reports the usage booked for it (``booked_usage``, its worst case).
"""

from __future__ import annotations

import json
from typing import Any

from chatbatch.core.output_lines import OutputLine
from chatbatch.translate import Form, answer_body
from chatbatch.translate.completion_to_message import known_finish

STATUS_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}
CODE_TYPES = {
    "invalid_job": "invalid_request_error",
    "over_request_cap": "invalid_request_error",
    "request_too_large": "invalid_request_error",
    "over_budget": "billing_error",
    "request_timeout": "timeout_error",
    "rate_limited": "rate_limit_error",
}
UNATTEMPTED = {"batch_cancelled": "canceled", "batch_expired": "expired"}


def error_type(status: int) -> str:
    """Anthropic's error type for an HTTP status."""
    return STATUS_TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")


def _errored(kind: str, message: str) -> dict[str, Any]:
    error = {"type": kind, "message": message}
    return {"type": "errored", "error": {"type": "error", "error": error}}


def _finish_reason(body: dict[str, Any]) -> Any:
    choices = body.get("choices")
    first = choices[0] if isinstance(choices, list) and choices else None
    return first.get("finish_reason") if isinstance(first, dict) else None


def anthropic_line(line: OutputLine) -> dict[str, Any]:
    """The Anthropic results line of a stored line."""
    extension = line.chatbatch.model_dump(mode="json") if line.chatbatch else {}
    if line.response is not None and line.response.status_code == 200:
        body, facts = line.response.body, line.chatbatch
        booked = facts.booked_usage if facts and facts.usage_estimated else None
        answer = answer_body("anthropic", body, line.custom_id, booked)
        result: dict[str, Any] = {"type": "succeeded", "message": answer}
        finish = _finish_reason(body)
        if not known_finish(finish):  # its stop_reason says end_turn: what it was
            extension["finish_reason"] = finish
    elif line.response is not None:
        status, body = line.response.status_code, line.response.body
        error = body.get("error")
        message = str(error.get("message", "")) if isinstance(error, dict) else str(body)[:500]
        result = _errored(error_type(status), message)
        extension |= {"code": f"provider_{status}", "status_code": status}
        extension |= {"request_id": line.response.request_id, "body": body}
    else:
        assert line.error is not None
        code = line.error.code
        extension["code"] = code
        if code in UNATTEMPTED:
            result = {"type": UNATTEMPTED[code]}
            extension["message"] = line.error.message
        else:
            result = _errored(CODE_TYPES.get(code, "api_error"), line.error.message)
    return {"custom_id": line.custom_id, "result": result, "chatbatch": extension}


def written(form: Form, line: OutputLine) -> tuple[str, bool]:
    """A stored line as a batch of ``form`` writes it, and whether it goes in the results
    file: an OpenAI-form batch's error lines go in the error file; an Anthropic-form
    batch has one results file, as Anthropic's."""
    if form == "anthropic":
        return json.dumps(anthropic_line(line), ensure_ascii=False), True
    return line.to_line(), line.is_result
