"""An OpenAI ``chat.completion`` -> an Anthropic ``Message`` (pure, on dicts).

For an Anthropic-form job answered by an OpenAI-kind provider. The first choice (an
Anthropic job asks for one): its ``content`` -> a text block (a ``refusal`` too), its
``tool_calls`` -> ``tool_use`` blocks with ``input`` parsed from the JSON arguments (text
that is not a JSON object is kept under ``{"arguments": ...}``); ``finish_reason`` stop ->
``end_turn``, length -> ``max_tokens``, tool_calls / function_call -> ``tool_use``,
content_filter -> ``refusal``. OpenAI does not say which stop sequence matched, so a stop
is always ``end_turn`` with ``stop_sequence: null``. Usage: ``input_tokens`` is the
prompt less its cache hits (``prompt_tokens_details.cached_tokens``), which are
``cache_read_input_tokens``; ``output_tokens`` is ``completion_tokens``. Nothing is
refused: every completion has a Message.
"""

from __future__ import annotations

import json
from typing import Any

from chatbatch.core.pricing import Usage

STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


def _input(arguments: str) -> dict[str, Any]:
    try:
        parsed = json.loads(arguments)
    except (ValueError, RecursionError):
        parsed = None
    return parsed if isinstance(parsed, dict) else {"arguments": arguments}


def _blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for text in (message.get("content"), message.get("refusal")):
        if text:
            blocks.append({"type": "text", "text": text})
    for call in message.get("tool_calls") or []:
        function = call.get("function") or call.get("custom") or {}
        raw = function.get("arguments", function.get("input", ""))
        blocks.append(
            {"type": "tool_use", "id": call["id"], "name": function["name"], "input": _input(raw)}
        )
    return blocks


def _usage(usage: dict[str, Any] | None) -> dict[str, Any]:
    counted = Usage.from_api(usage)
    return {
        "input_tokens": counted.uncached_prompt_tokens,
        "output_tokens": counted.completion_tokens,
        "cache_read_input_tokens": counted.cached_tokens,
        "cache_creation_input_tokens": 0,
    }


def completion_to_message(completion: dict[str, Any]) -> dict[str, Any]:
    """The Anthropic Message of a chat completion (its first choice)."""
    choices = completion.get("choices") or [{}]
    choice = choices[0]
    reason = choice.get("finish_reason")
    return {
        "id": completion.get("id", ""),
        "type": "message",
        "role": "assistant",
        "model": completion.get("model", ""),
        "content": _blocks(choice.get("message") or {}),
        "stop_reason": STOP_REASONS.get(reason, "end_turn") if reason else None,
        "stop_sequence": None,
        "usage": _usage(completion.get("usage")),
    }
