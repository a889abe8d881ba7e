"""The simulator's own copy of what Anthropic's Messages API refuses in a request that is
well formed (``refusal``: the 400 message Anthropic answers, or None), written from
Anthropic's documentation and answers, never from chatbatch's checks: empty content in a
message other than a final assistant one, a text block of whitespace only, an empty
system text block, a final assistant turn (a prefill) ending in whitespace, thinking with
a temperature other than 1 or with a tool_choice forcing a tool, more than 4 blocks
marked cache_control (a top-level cache_control takes one), two tools of one name, a
tool_result after another block in a user message.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

MAX_BREAKPOINTS = 4
Refusal = str | None


def _blocks(content: Any) -> list[dict[str, Any]]:
    return [b for b in content if isinstance(b, dict)] if isinstance(content, list) else []


def _empty(body: dict[str, Any]) -> Refusal:
    messages = body["messages"]
    for index, message in enumerate(messages):
        last_assistant = index == len(messages) - 1 and message["role"] == "assistant"
        if not message["content"] and not last_assistant:
            return (
                f"messages.{index}: all messages must have non-empty content except for the "
                "optional final assistant message"
            )
    return None


def _whitespace(body: dict[str, Any]) -> Refusal:
    for block in _blocks(body.get("system")):
        if block.get("type") == "text" and block.get("text") == "":
            return "system: text content blocks must be non-empty"
    for message in body["messages"]:
        content = message["content"]
        texts: list[Any] = [content] if isinstance(content, str) else []
        texts += [b.get("text") for b in _blocks(content) if b.get("type") == "text"]
        if any(isinstance(t, str) and t and not t.strip() for t in texts):
            return "messages: text content blocks must contain non-whitespace text"
    return None


def _prefill(body: dict[str, Any]) -> Refusal:
    last = body["messages"][-1]
    if last["role"] != "assistant":
        return None
    content = last["content"]
    texts = [b.get("text") for b in _blocks(content) if b.get("type") == "text"]
    text = content if isinstance(content, str) else (texts[-1] if texts else "")
    if isinstance(text, str) and text != text.rstrip():
        return "messages: final assistant content cannot end with trailing whitespace"
    return None


def _thinking(body: dict[str, Any]) -> Refusal:
    thinking = body.get("thinking")
    if not isinstance(thinking, dict) or thinking.get("type") != "enabled":
        return None
    if body.get("temperature") not in (None, 1):
        return "temperature may only be set to 1 when thinking is enabled."
    if (body.get("tool_choice") or {}).get("type") in ("any", "tool"):
        return "Thinking may not be enabled when tool_choice forces tool use."
    return None


def _count_marked(value: Any) -> int:
    if isinstance(value, list):
        return sum(_count_marked(v) for v in value)
    if not isinstance(value, dict):
        return 0
    own = int(isinstance(value.get("cache_control"), dict))
    skip = ("cache_control", "input_schema", "input")
    return own + sum(_count_marked(v) for k, v in value.items() if k not in skip)


def _breakpoints(body: dict[str, Any]) -> Refusal:
    found = _count_marked(body)
    if found > MAX_BREAKPOINTS:
        most = MAX_BREAKPOINTS
        return f"A maximum of {most} blocks with cache_control may be provided. Found {found}."
    return None


def _tool_names(body: dict[str, Any]) -> Refusal:
    names = [tool.get("name") for tool in _blocks(body.get("tools"))]
    return "tools: Tool names must be unique." if len(names) != len(set(names)) else None


def _results_first(body: dict[str, Any]) -> Refusal:
    for index, message in enumerate(body["messages"]):
        kinds = [b.get("type") for b in _blocks(message["content"])]
        results = [at for at, kind in enumerate(kinds) if kind == "tool_result"]
        if results and results != list(range(len(results))):
            return (
                f"messages.{index}: tool_result blocks must come first in the user message's "
                "content, before any other blocks"
            )
    return None


CHECKS: tuple[Callable[[dict[str, Any]], Refusal], ...] = (
    _empty,
    _whitespace,
    _prefill,
    _thinking,
    _breakpoints,
    _tool_names,
    _results_first,
)


def refusal(body: dict[str, Any]) -> Refusal:
    """Anthropic's 400 message for a well-formed body it refuses, or None."""
    for check in CHECKS:
        found = check(body)
        if found is not None:
            return found
    return None
