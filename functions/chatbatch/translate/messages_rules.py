"""What Anthropic's Messages API refuses that chatbatch can know before sending: the rules
every body for a kind ``anthropic`` provider meets (``check_messages``, applied by
``translate.wire_body``, so ``check_job`` refuses the line at submit and nothing is queued
only to fail at the provider).

Each rule is Anthropic's documented 400 (its wording in the reason): a message with empty
content (but a final assistant one), a text block of whitespace only, an empty system text
block, a final assistant turn (a prefill) ending in whitespace, extended thinking with a
``temperature`` other than 1 or with a ``tool_choice`` that forces a tool, more than 4
blocks marked ``cache_control`` (a top-level ``cache_control`` takes one of them), two
tools of one name, a ``tool_result`` after another block in a user message, and
``temperature`` / ``top_p`` / ``top_k`` under an ``anthropic-version`` that refuses them.

The simulator (``chatbatch.local.simulator.messages``) refuses the same requests with its
own code, written from Anthropic's documentation: it is the adversary these rules are
tested against.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from chatbatch.core.untranslatable import Untranslatable
from chatbatch.translate.chat_to_messages import SAMPLING, sampling_refused

MAX_CACHE_BREAKPOINTS = 4
FORCING_CHOICES = ("any", "tool")

Found = tuple[str, str] | None  # (field, why) of the first refusal, or None
Messages = list[dict[str, Any]]


def check_messages(body: dict[str, Any], *, sampling: bool, prefix: str = "") -> None:
    """Raise ``Untranslatable`` (its field under ``prefix``) for the first rule ``body``
    breaks; ``sampling``: whether the provider's anthropic-version takes temperature,
    top_p and top_k."""
    if not sampling:
        for key in SAMPLING:
            if body.get(key) is not None:
                raise sampling_refused(prefix + key)
    for rule in RULES:
        found = rule(body)
        if found is not None:
            raise Untranslatable(prefix + found[0], found[1])


def _blocks(content: Any) -> Messages:
    return [b for b in content if isinstance(b, dict)] if isinstance(content, list) else []


def _empty_content(body: dict[str, Any]) -> Found:
    messages: Messages = body.get("messages") or []
    for index, message in enumerate(messages):
        final_assistant = index == len(messages) - 1 and message.get("role") == "assistant"
        if message.get("content") in ("", []) and not final_assistant:
            return (
                f"messages[{index}].content",
                "empty: Anthropic refuses it (all messages must have non-empty content "
                "except for the optional final assistant message)",
            )
    return None


def _blank_text(body: dict[str, Any]) -> Found:
    for index, block in enumerate(_blocks(body.get("system"))):
        if block.get("type") == "text" and block.get("text") == "":
            return f"system[{index}].text", "empty: Anthropic refuses empty system text blocks"
    for index, message in enumerate(body.get("messages") or []):
        content = message.get("content")
        texts: list[tuple[str, Any]] = (
            [(f"messages[{index}].content", content)] if isinstance(content, str) else []
        )
        texts += [
            (f"messages[{index}].content[{at}].text", block.get("text"))
            for at, block in enumerate(_blocks(content))
            if block.get("type") == "text"
        ]
        for field, text in texts:
            if isinstance(text, str) and text and not text.strip():
                return field, (
                    "whitespace only: Anthropic refuses it (text content blocks must "
                    "contain non-whitespace text)"
                )
    return None


def _prefill_whitespace(body: dict[str, Any]) -> Found:
    messages: Messages = body.get("messages") or []
    if not messages or messages[-1].get("role") != "assistant":
        return None
    content = messages[-1].get("content")
    texts = [b for b in _blocks(content) if b.get("type") == "text"]
    text = content if isinstance(content, str) else (texts[-1].get("text") if texts else "")
    if isinstance(text, str) and text != text.rstrip():
        return (
            f"messages[{len(messages) - 1}].content",
            "the final assistant turn (a prefill) ends with whitespace: Anthropic refuses "
            "it (final assistant content cannot end with trailing whitespace)",
        )
    return None


def _thinking(body: dict[str, Any]) -> Found:
    thinking = body.get("thinking")
    if not isinstance(thinking, dict) or thinking.get("type") == "disabled":
        return None
    temperature = body.get("temperature")
    if temperature is not None and temperature != 1:
        return "temperature", (
            f"{temperature} with thinking enabled: Anthropic refuses it (temperature may "
            "only be set to 1 when thinking is enabled)"
        )
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") in FORCING_CHOICES:
        return "tool_choice", (
            f"{choice.get('type')!r} with thinking enabled: Anthropic refuses it (thinking "
            "may not be enabled when tool_choice forces tool use)"
        )
    return None


def _cache_breakpoints(body: dict[str, Any]) -> Found:
    marks = _marks(body)
    if marks > MAX_CACHE_BREAKPOINTS:
        return "cache_control", (
            f"{marks} blocks marked cache_control: Anthropic refuses more than "
            f"{MAX_CACHE_BREAKPOINTS} (a top-level cache_control takes one of them)"
        )
    return None


def _marks(value: Any) -> int:
    """Blocks marked ``cache_control`` in a request (not inside a tool's schema or a tool
    call's input, which are the caller's data)."""
    if isinstance(value, list):
        return sum(_marks(item) for item in value)
    if not isinstance(value, dict):
        return 0
    own = 1 if isinstance(value.get("cache_control"), dict) else 0
    data = ("input_schema", "input", "cache_control")
    return own + sum(_marks(v) for k, v in value.items() if k not in data)


def _tool_names(body: dict[str, Any]) -> Found:
    seen: set[str] = set()
    for index, tool in enumerate(_blocks(body.get("tools"))):
        name = tool.get("name")
        if name in seen:
            return f"tools[{index}].name", f"{name!r} again: Anthropic refuses it (tool names "
            "must be unique)"
        seen.add(str(name))
    return None


def _tool_results_first(body: dict[str, Any]) -> Found:
    for index, message in enumerate(body.get("messages") or []):
        if message.get("role") != "user":
            continue
        kinds = [block.get("type") for block in _blocks(message.get("content"))]
        first_other = next((at for at, kind in enumerate(kinds) if kind != "tool_result"), None)
        if first_other is not None and "tool_result" in kinds[first_other:]:
            at = first_other + kinds[first_other:].index("tool_result")
            return f"messages[{index}].content[{at}]", (
                "a tool_result after another block: Anthropic refuses it (tool_result "
                "blocks must come first in the user message's content)"
            )
    return None


RULES: tuple[Callable[[dict[str, Any]], Found], ...] = (
    _empty_content,
    _blank_text,
    _prefill_whitespace,
    _thinking,
    _cache_breakpoints,
    _tool_names,
    _tool_results_first,
)
