"""What OpenAI's Batch API checks in an input file before it runs a line (``read_lines``):
each line a JSON object ``{custom_id, method: "POST", url, body}``, the url the batch's
endpoint, custom_id unique within the file, one model in the file, at most 50,000 lines.
A file that breaks any rule fails the whole batch, every problem reported as
``errors.data`` ``{code, message, param, line}`` (lines numbered from 1). A body the chat
API would refuse is not checked here: that line runs, and gets the chat API's 400.

The codes: ``invalid_json_line``, ``duplicate_custom_id`` and ``mismatched_model`` are
OpenAI's (seen in its answers); ``empty_file`` and ``too_many_tasks`` are reported by
others; ``invalid_url``, ``missing_required_parameter`` and ``invalid_request`` (a method
other than POST, a line that is not an object) are the simulator's own guesses.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

MAX_LINES = 50_000
MAX_REPORTED = 100  # a file with thousands of bad lines reports the first ones
FIELDS = (("custom_id", str), ("method", str), ("url", str), ("body", dict))


@dataclass(frozen=True)
class Line:
    custom_id: str
    body: dict[str, Any]


def _error(code: str, message: str, line: int | None, param: str | None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": param, "line": line}


def _check(number: int, text: bytes, endpoint: str) -> tuple[Line | None, dict[str, Any] | None]:
    try:
        item = json.loads(text)
    except ValueError:
        return None, _error(
            "invalid_json_line", "This line is not parseable as valid JSON.", number, None
        )
    if not isinstance(item, dict):
        return None, _error("invalid_request", "Each line must be a JSON object.", number, None)
    for name, kind in FIELDS:
        if name not in item:
            return None, _error(
                "missing_required_parameter", f"Missing required parameter: '{name}'.", number, name
            )
        if not isinstance(item[name], kind):
            kind_name = "an object" if kind is dict else "a string"
            return None, _error(
                "invalid_request", f"Invalid '{name}': expected {kind_name}.", number, name
            )
    if item["method"] != "POST":
        return None, _error(
            "invalid_request", "Only the POST method is supported in a batch.", number, "method"
        )
    if item["url"] != endpoint:
        return None, _error(
            "invalid_url",
            f"The URL provided for this request ('{item['url']}') does not match the batch "
            f"endpoint ('{endpoint}').",
            number,
            "url",
        )
    return Line(item["custom_id"], item["body"]), None


def read_lines(
    data: bytes, endpoint: str, max_lines: int = MAX_LINES
) -> tuple[list[Line], str | None, list[dict[str, Any]]]:
    """(the lines, their one model, the errors: empty when the batch may run)."""
    texts = [t for t in data.splitlines() if t.strip()]
    if not texts:
        return [], None, [_error("empty_file", "The input file is empty.", None, None)]
    if len(texts) > max_lines:
        message = f"The input file has {len(texts)} requests; a batch may hold at most {max_lines}."
        return [], None, [_error("too_many_tasks", message, None, None)]
    lines: list[Line] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    model: str | None = None
    for number, text in enumerate(texts, start=1):
        line, error = _check(number, text, endpoint)
        if line is not None and line.custom_id in seen:
            error = _error(
                "duplicate_custom_id",
                "The custom_id for this request is a duplicate of another request. The "
                "custom_id parameter must be unique for each request in a batch.",
                number,
                "custom_id",
            )
        elif line is not None:
            seen.add(line.custom_id)
            wanted = line.body.get("model")
            if model is None and isinstance(wanted, str):
                model = wanted
            elif wanted != model:
                error = _error(
                    "mismatched_model",
                    "The provided model does not match the model of the other requests in "
                    "this batch; a batch file may hold requests for one model only.",
                    number,
                    "body.model",
                )
        if error is not None:
            errors.append(error)
        elif line is not None:
            lines.append(line)
    return lines, model, errors[:MAX_REPORTED]
