"""Anthropic's Messages API as the simulator speaks it (``POST /v1/messages``), written
from Anthropic's documentation and never from chatbatch's translation: what it accepts
and refuses (``validate_messages``: ``x-api-key`` and ``anthropic-version`` required,
``max_tokens`` required, roles user, assistant and system (a system message in
``messages``, as the SDK declares), typed content blocks (search_result included),
``tool_use`` / ``tool_result`` pairing, unknown top-level fields refused, a top-level
``cache_control`` taken, and the refusals of ``message_refusals``), its error
shape (``AnthropicError``: ``{"type": "error", "error": {"type", "message"},
"request_id"}``), prompt caching (``cache_usage``: a prefix ending in a block marked
``cache_control`` is billed as ``cache_creation_input_tokens`` the first time and
``cache_read_input_tokens`` when seen again; order: tools, system, messages), and the
answer as a Message or as its stream of events (``MessageAnswer``).

Unlike the real API the simulator caches a prefix of any length (Anthropic's minimum is
1024 to 4096 tokens by model) and answers a thinking request without thinking.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from chatbatch.local.simulator.answers import count_tokens
from chatbatch.local.simulator.api import ApiError
from chatbatch.local.simulator.message_refusals import refusal

TOP_LEVEL = frozenset(
    {
        "model",
        "max_tokens",
        "messages",
        "system",
        "metadata",
        "stop_sequences",
        "stream",
        "temperature",
        "top_p",
        "top_k",
        "tools",
        "tool_choice",
        "thinking",
        "service_tier",
        "cache_control",
    }
)
BLOCK_TYPES = {
    "user": ("text", "image", "tool_result", "document", "search_result"),
    "assistant": ("text", "tool_use", "thinking", "redacted_thinking"),
    "system": ("text",),  # a system message in messages (the SDK's SystemMessageParam)
}
IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
# Anthropic's answer to an account out of credit: a 400 invalid_request_error, not a 402
NO_CREDIT = (
    "Your credit balance is too low to access the Anthropic API. Please go to Plans & "
    "Billing to upgrade or purchase credits."
)
MESSAGE_OVERHEAD = 4
REQUEST_OVERHEAD = 3


class AnthropicError(ApiError):
    """An error response in Anthropic's shape."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(
            status, message, type=ERROR_TYPES.get(status, "api_error"), headers=headers
        )
        self.request_id = "req_" + uuid.uuid4().hex[:24]
        self.headers.setdefault("request-id", self.request_id)

    def body(self) -> dict[str, Any]:
        error = {"type": self.type, "message": self.message}
        return {"type": "error", "error": error, "request_id": self.request_id}


def invalid(message: str) -> AnthropicError:
    return AnthropicError(400, message)


def authorize(key: str | None, headers: dict[str, str]) -> None:
    """Anthropic's header checks: the version always, the key when one is set."""
    if key is not None:
        given = headers.get("x-api-key")
        if given is None:
            raise AnthropicError(401, "x-api-key header is required")
        if given != key:
            raise AnthropicError(401, "invalid x-api-key")
    if not headers.get("anthropic-version"):
        raise invalid("anthropic-version: header is required")


def _check_block(where: str, role: str, block: Any) -> None:
    kind = block.get("type") if isinstance(block, dict) else None
    if kind not in BLOCK_TYPES[role]:
        raise invalid(f"{where}.type: Input tag '{kind}' is not allowed in a {role} message")
    if kind == "text" and (not isinstance(block.get("text"), str) or not block["text"]):
        raise invalid(f"{where}.text: text content blocks must be non-empty")
    if kind == "image":
        source = block.get("source") or {}
        if source.get("type") == "base64":
            if source.get("media_type") not in IMAGE_TYPES or not isinstance(
                source.get("data"), str
            ):
                raise invalid(f"{where}.source: a base64 image needs media_type and data")
        elif source.get("type") != "url" or not isinstance(source.get("url"), str):
            raise invalid(f"{where}.source: Input tag '{source.get('type')}' is not allowed")
    if kind == "tool_use" and not (
        isinstance(block.get("id"), str)
        and isinstance(block.get("name"), str)
        and isinstance(block.get("input"), dict)
    ):
        raise invalid(f"{where}: a tool_use block needs id, name and an input object")
    if kind == "tool_result" and not isinstance(block.get("tool_use_id"), str):
        raise invalid(f"{where}.tool_use_id: Field required")
    if kind == "search_result":
        _check_search_result(where, block)
    _check_cache_control(where, block.get("cache_control"))


def _check_search_result(where: str, block: dict[str, Any]) -> None:
    if not (isinstance(block.get("source"), str) and isinstance(block.get("title"), str)):
        raise invalid(f"{where}: a search_result block needs source and title")
    content = block.get("content")
    if not isinstance(content, list) or not all(
        isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str)
        for b in content
    ):
        raise invalid(f"{where}.content: Input should be a list of text blocks")


def _check_cache_control(where: str, control: Any) -> None:
    if control is not None and (
        not isinstance(control, dict) or control.get("type") != "ephemeral"
    ):
        raise invalid(f"{where}.cache_control.type: Input should be 'ephemeral'")


def _check_messages(messages: Any) -> None:
    if not isinstance(messages, list) or not messages:
        raise invalid("messages: at least one message is required")
    open_calls: set[str] = set()
    for index, message in enumerate(messages):
        where = f"messages.{index}"
        role = message.get("role") if isinstance(message, dict) else None
        if role not in BLOCK_TYPES:
            raise invalid(f"{where}.role: Input should be 'user', 'assistant' or 'system'")
        content = message.get("content")
        if isinstance(content, str):
            blocks: list[Any] = []
        elif isinstance(content, list):
            blocks = content
        else:
            raise invalid(f"{where}.content: Input should be a valid string or list of blocks")
        for number, block in enumerate(blocks):
            _check_block(f"{where}.content.{number}", role, block)
        results = {b["tool_use_id"] for b in blocks if b.get("type") == "tool_result"}
        if results - open_calls:
            raise invalid(
                f"{where}.content: unexpected `tool_use_id` found in `tool_result` blocks: "
                f"{sorted(results - open_calls)[0]}. Each `tool_result` block must have a "
                "corresponding `tool_use` block in the previous message."
            )
        if open_calls - results:
            raise invalid(
                f"{where}: `tool_use` ids were found without `tool_result` blocks immediately "
                f"after: {sorted(open_calls - results)[0]}. Each `tool_use` block must have a "
                "corresponding `tool_result` block in the next message."
            )
        open_calls = {b["id"] for b in blocks if b.get("type") == "tool_use"}
    if open_calls:
        raise invalid("messages: the last assistant message's tool_use blocks have no tool_result")


def validate_messages(body: Any) -> None:
    """Raise ``AnthropicError`` (400) for a body Anthropic would refuse."""
    if not isinstance(body, dict):
        raise invalid("There was an issue with your request body: not a JSON object")
    for key in sorted(set(body) - TOP_LEVEL):
        raise invalid(f"{key}: Extra inputs are not permitted")
    if not isinstance(body.get("model"), str):
        raise invalid("model: Field required")
    cap = body.get("max_tokens")
    if cap is None:
        raise invalid("max_tokens: Field required")
    if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
        raise invalid("max_tokens: Input should be a valid integer greater than or equal to 1")
    _check_messages(body.get("messages"))
    _check_cache_control("cache_control", body.get("cache_control"))
    system = body.get("system")
    if system is not None and not isinstance(system, str):
        for number, block in enumerate(system if isinstance(system, list) else [None]):
            if not isinstance(block, dict) or block.get("type") != "text":
                raise invalid(f"system.{number}: Input should be a text block")
    temperature = body.get("temperature")
    if temperature is not None and not 0 <= temperature <= 1:
        raise invalid("temperature: Input should be less than or equal to 1")
    for number, tool in enumerate(body.get("tools") or []):
        if not isinstance(tool, dict) or not isinstance(tool.get("input_schema"), dict):
            raise invalid(f"tools.{number}.input_schema: Field required")
    refused = refusal(body)
    if refused is not None:
        raise invalid(refused)


# --- what is billed -------------------------------------------------------------------


def _text_of(block: Any) -> str:
    if isinstance(block, str):
        return block
    if not isinstance(block, dict):
        return ""
    if block.get("type") == "tool_use":
        return f"{block.get('name', '')} {json.dumps(block.get('input'))}"
    if block.get("type") == "tool_result":
        content = block.get("content")
        inner = content if isinstance(content, list) else [content]
        return " ".join(_text_of(b) for b in inner if b is not None)
    if block.get("type") == "image":
        return "image " * 85
    if block.get("type") == "search_result":
        texts = " ".join(_text_of(b) for b in block.get("content") or [])
        return f"{block.get('source', '')} {block.get('title', '')} {texts}"
    if block.get("type") == "tool_use" or "input_schema" in block:
        return json.dumps(block)
    return str(block.get("text") or block.get("thinking") or "")


def _ttl(unit: Any) -> str | None:
    """A unit's cache breakpoint: its ttl ("5m" unless it says "1h"), or None."""
    control = unit.get("cache_control") if isinstance(unit, dict) else None
    return (control.get("ttl") or "5m") if isinstance(control, dict) else None


def _units(body: dict[str, Any]) -> Iterator[tuple[Any, int, str | None]]:
    """(unit, tokens, the ttl of a cache breakpoint after it or None) in the cache's order:
    tools, system, messages (each message's blocks)."""
    for tool in body.get("tools") or []:
        yield tool, count_tokens(json.dumps(tool)), _ttl(tool)
    system = body.get("system")
    for block in [system] if isinstance(system, str) else system or []:
        yield block, count_tokens(_text_of(block)), _ttl(block)
    for message in body["messages"]:
        content = message["content"]
        yield message["role"], MESSAGE_OVERHEAD, None
        for block in [content] if isinstance(content, str) else content:
            yield block, count_tokens(_text_of(block)), _ttl(block)


@dataclass(frozen=True)
class CacheUsage:
    """A request's input tokens split the way Anthropic bills them."""

    input_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int
    breakpoints: list[bytes]  # the digests of the prefixes marked for caching
    cache_write_1h_tokens: int = 0  # of the writes, those to the 1-hour cache

    def usage(self, output: int) -> dict[str, Any]:
        """Anthropic's usage block for these input tokens and ``output``."""
        hour = self.cache_write_1h_tokens
        return {
            "input_tokens": self.input_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
            "cache_creation": {
                "ephemeral_5m_input_tokens": self.cache_creation_input_tokens - hour,
                "ephemeral_1h_input_tokens": hour,
            },
            "output_tokens": output,
        }

    @property
    def prompt(self) -> int:
        return self.input_tokens + self.cache_creation_input_tokens + self.cache_read_input_tokens


def cache_usage(body: dict[str, Any], seen: set[bytes]) -> CacheUsage:
    """The input tokens of ``body``: the longest marked prefix in ``seen`` read from the
    cache, the rest up to the last marked prefix written to it (up to the last one marked
    ttl "1h" written to the 1-hour cache, the rest to the 5-minute one), the remainder
    plain."""
    running, total = hashlib.sha256(), REQUEST_OVERHEAD
    marks: list[tuple[bytes, int, str]] = []
    for unit, tokens, ttl in _units(body):
        running.update(json.dumps(unit, sort_keys=True).encode())
        total += tokens
        if ttl is not None:
            marks.append((running.copy().digest()[:16], total, ttl))
    read = max((end for digest, end, _ in marks if digest in seen), default=0)
    written = max(max((end for _, end, _ in marks), default=0) - read, 0)
    hour = max(max((end for _, end, ttl in marks if ttl == "1h"), default=0) - read, 0)
    return CacheUsage(total - read - written, written, read, [d for d, _, _ in marks], hour)


# --- the answer -----------------------------------------------------------------------

STOP = {"stop": "end_turn", "length": "max_tokens"}


@dataclass(frozen=True)
class MessageAnswer:
    """One Message: its text, stop reason and usage, as a JSON body or as stream events."""

    id: str
    model: str
    text: str
    stop_reason: str
    usage: dict[str, Any]

    def body(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [{"type": "text", "text": self.text}] if self.text else [],
            "stop_reason": self.stop_reason,
            "stop_sequence": None,
            "usage": self.usage,
        }

    def events(self, pieces: list[str], with_usage: bool = True) -> list[bytes]:
        """The stream: message_start, ping, one text block in ``pieces``, message_delta
        (stop reason, cumulative usage), message_stop."""
        start = self.body() | {"content": [], "stop_reason": None}
        start["usage"] = self.usage | {"output_tokens": 1} if with_usage else {}
        frames = [
            _event("message_start", {"message": start}),
            _event("ping", {}),
            _event(
                "content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}
            ),
        ]
        frames += [
            _event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": p}})
            for p in pieces
        ]
        frames.append(_event("content_block_stop", {"index": 0}))
        delta: dict[str, Any] = {"delta": {"stop_reason": self.stop_reason, "stop_sequence": None}}
        if with_usage:
            delta["usage"] = {"output_tokens": self.usage["output_tokens"]}
        frames += [_event("message_delta", delta), _event("message_stop", {})]
        return frames


def _event(name: str, data: dict[str, Any]) -> bytes:
    payload = json.dumps({"type": name, **data}, separators=(",", ":"))
    return f"event: {name}\ndata: {payload}\n\n".encode()


def error_event(message: str) -> bytes:
    return _event("error", {"error": {"type": "overloaded_error", "message": message}})
