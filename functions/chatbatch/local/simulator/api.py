"""What the chat API accepts and refuses: the real API's rules and messages for a request
body, the API key check, the account errors, and the error shape (``ApiError``)."""

from __future__ import annotations

import json
from typing import Any

from chatbatch.local.simulator.settings import AccountErrorKind

ROLES = ("system", "developer", "user", "assistant", "tool", "function")
PART_TYPES = ("text", "image_url", "input_audio", "refusal", "audio", "file")
# the part types each role may send (OpenAI's message params); others: text only
PARTS_OF_ROLE = {
    "user": ("text", "image_url", "input_audio", "file"),
    "assistant": ("text", "refusal"),
}


class ApiError(Exception):
    """An error response in OpenAI's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type = status, message, type
        self.param, self.code, self.headers = param, code, headers or {}

    def body(self) -> dict[str, Any]:
        error = {"message": self.message, "type": self.type, "param": self.param}
        return {"error": error | {"code": self.code}}


def invalid(message: str, param: str | None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def _json_type(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a decimal", str: "a string"}
    names |= {dict: "an object", list: "an array", type(None): "null"}
    return names.get(type(value), type(value).__name__)


# name -> (minimum, maximum, integer?)
_RANGES: dict[str, tuple[float | None, float | None, bool]] = {
    "temperature": (0, 2, False),
    "top_p": (0, 1, False),
    "presence_penalty": (-2, 2, False),
    "frequency_penalty": (-2, 2, False),
    "max_tokens": (1, None, True),
    "max_completion_tokens": (1, None, True),
    "n": (1, 128, True),
}


def _check_number(
    name: str, value: Any, low: float | None, high: float | None, integer: bool
) -> None:
    kind = "integer" if integer else "decimal"
    if isinstance(value, bool) or not isinstance(value, int if integer else int | float):
        raise invalid(
            f"Invalid type for '{name}': expected {'an integer' if integer else 'a decimal'}, "
            f"but got {_json_type(value)} instead.",
            name,
            "invalid_type",
        )
    if low is not None and value < low:
        raise invalid(
            f"Invalid '{name}': {kind} below minimum value. Expected a value >= {low:g}, "
            f"but got {value} instead.",
            name,
            f"{kind}_below_min_value",
        )
    if high is not None and value > high:
        raise invalid(
            f"Invalid '{name}': {kind} above maximum value. Expected a value <= {high:g}, "
            f"but got {value} instead.",
            name,
            f"{kind}_above_max_value",
        )


def _values(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{v}'" for v in values)


def _check_parts(where: str, role: str, parts: list[Any]) -> None:
    """Content parts as OpenAI checks them: a known type the role may send, its fields."""
    for index, part in enumerate(parts):
        at = f"{where}.content[{index}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in PART_TYPES:
            raise invalid(
                f"Invalid value: {json.dumps(kind)}. Supported values are: {_values(PART_TYPES)}.",
                f"{at}.type",
                "invalid_value",
            )
        allowed = PARTS_OF_ROLE.get(role, ("text",))
        if kind not in allowed:
            raise invalid(
                f"Invalid value: '{kind}'. Supported values are: {_values(allowed)}.",
                f"{at}.type",
                "invalid_value",
            )
        field = {"text": "text", "refusal": "refusal", "image_url": "image_url"}.get(kind)
        value = part.get(field) if field else None
        if kind == "image_url" and isinstance(value, dict):
            value = value.get("url")
        if field and not isinstance(value, str):
            name = f"{at}.{field}" + (".url" if kind == "image_url" else "")
            raise invalid(
                f"Missing required parameter: '{name}'.", name, "missing_required_parameter"
            )


def _check_calls(where: str, calls: Any) -> list[str]:
    """An assistant turn's ``tool_calls``: each with an id and a function (or custom)
    call; returns their ids."""
    if not isinstance(calls, list) or not calls:
        raise invalid(
            f"Invalid 'tool_calls': empty array. Expected an array with minimum length 1, "
            f"but got {'an empty array' if calls == [] else _json_type(calls)} instead.",
            f"{where}.tool_calls",
            "empty_array",
        )
    ids = []
    for index, call in enumerate(calls):
        at = f"{where}.tool_calls[{index}]"
        kind = call.get("type") if isinstance(call, dict) else None
        inner = call.get(kind) if isinstance(call, dict) and kind else None
        text = "arguments" if kind == "function" else "input"
        if kind not in ("function", "custom") or not isinstance(call.get("id"), str):
            raise invalid(f"Invalid value for '{at}'.", at, "invalid_value")
        if not isinstance(inner, dict) or not isinstance(inner.get(text), str):
            raise invalid(
                f"Missing required parameter: '{at}.{kind}.{text}'.",
                f"{at}.{kind}.{text}",
                "missing_required_parameter",
            )
        ids.append(call["id"])
    return ids


def _check_message(index: int, message: Any, open_calls: set[str]) -> None:
    """One message, as OpenAI checks it; ``open_calls``: the tool call ids of earlier
    assistant turns not answered yet (a tool message must answer one)."""
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        raise invalid(
            f"Invalid type for '{where}': expected an object, but got {_json_type(message)} "
            "instead.",
            where,
            "invalid_type",
        )
    role = message.get("role")
    if role not in ROLES:
        raise invalid(
            f"Invalid value: {json.dumps(role)}. Supported values are: {_values(ROLES)}.",
            f"{where}.role",
            "invalid_value",
        )
    content = message.get("content")
    calls = message.get("tool_calls") is not None or message.get("function_call") is not None
    nullable = role == "function" or (role == "assistant" and calls)
    if isinstance(content, list):
        _check_parts(where, role, content)
    elif not isinstance(content, str) and not (content is None and nullable):
        raise invalid(
            f"Invalid type for '{where}.content': expected a string, but got "
            f"{_json_type(content)} instead.",
            f"{where}.content",
            "invalid_type",
        )
    if role == "assistant" and message.get("tool_calls") is not None:
        open_calls.update(_check_calls(where, message["tool_calls"]))
    if role == "tool":
        if not isinstance(message.get("tool_call_id"), str):
            raise invalid(
                f"Missing required parameter: '{where}.tool_call_id'.",
                f"{where}.tool_call_id",
                "missing_required_parameter",
            )
        if message["tool_call_id"] not in open_calls:
            raise invalid(
                "Invalid parameter: messages with role 'tool' must be a response to a "
                "preceeding message with 'tool_calls'.",
                f"{where}.role",
            )
        open_calls.discard(message["tool_call_id"])


def validate_request(body: Any) -> None:
    """Raise ``ApiError`` (400) for a body the real API would refuse."""
    if not isinstance(body, dict):
        raise invalid("We could not parse the JSON body of your request.", None)
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise invalid("you must provide a model parameter", "model")
    messages = body.get("messages")
    if messages is None:
        raise invalid(
            "Missing required parameter: 'messages'.", "messages", "missing_required_parameter"
        )
    if not isinstance(messages, list) or not messages:
        raise invalid(
            "Invalid 'messages': expected a non-empty array of messages.",
            "messages",
            "empty_array" if isinstance(messages, list) else "invalid_type",
        )
    open_calls: set[str] = set()
    for index, message in enumerate(messages):
        _check_message(index, message, open_calls)
    for name, (low, high, integer) in _RANGES.items():
        if body.get(name) is not None:
            _check_number(name, body[name], low, high, integer)
    if "stream" in body and not isinstance(body["stream"], bool | None):
        raise invalid("Invalid type for 'stream': expected a boolean.", "stream", "invalid_type")
    if body.get("stream_options") is not None and not body.get("stream"):
        raise invalid(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            "stream_options",
            "invalid_value",
        )


def load_body(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        raise invalid(
            "We could not parse the JSON body of your request. The API expects a JSON payload.",
            None,
        ) from None


def authorize(key: str | None, headers: dict[str, str]) -> None:
    """Raise ``ApiError`` (401) unless ``headers`` carry ``key`` (None: no auth)."""
    if key is None:
        return
    given = headers.get("authorization", "")
    if not given:
        raise ApiError(
            401, "You didn't provide an API key in an Authorization header (Bearer KEY)."
        )
    if given != f"Bearer {key}":
        raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key")


def account_error(kind: AccountErrorKind, model: str) -> ApiError:
    """OpenAI's answer to a request of an account in trouble."""
    if kind is AccountErrorKind.insufficient_quota:
        return ApiError(
            429,
            "You exceeded your current quota, please check your plan and billing details. "
            "For more information on this error, read the docs: "
            "https://platform.openai.com/docs/guides/error-codes/api-errors.",
            type="insufficient_quota",
            code="insufficient_quota",
        )
    if kind is AccountErrorKind.model_not_found:
        return ApiError(
            404,
            f"The model `{model}` does not exist or you do not have access to it.",
            code="model_not_found",
        )
    return ApiError(
        401,
        "Incorrect API key provided: sk-****. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
        code="invalid_api_key",
    )
