"""An OpenAI ``chat.completion`` -> an Anthropic ``Message`` (pure, on dicts).

For an Anthropic-form job answered by an OpenAI-kind provider. The first choice (an
Anthropic job asks for one): its ``content`` -> a text block (a ``refusal`` too), its
``tool_calls`` -> ``tool_use`` blocks with ``input`` parsed from the JSON arguments (text
that is not a JSON object is kept under ``{"arguments": ...}``; a call without an ``id``,
as some gateways answer, gets a stable ``toolu_`` id made of the job's custom_id and the
call's index). ``finish_reason`` length -> ``max_tokens``; else any tool call ->
``tool_use`` (OpenAI answers a forced call, ``tool_choice`` required or a named
function, with ``stop``); stop -> ``end_turn``, content_filter -> ``refusal``. A finish
reason no Anthropic stop_reason means (DeepSeek's ``insufficient_system_resource``, a
gateway's own) is ``end_turn``: ``batch_results`` keeps the provider's ``finish_reason``
in the line's ``chatbatch`` extension (``known_finish``). OpenAI does not say which stop
sequence matched, so a stop is always ``end_turn`` with ``stop_sequence: null``.

Usage (the usage booked instead when the answer came without any: its worst case, as
the cost record has it): ``input_tokens`` is the prompt less its cache hits
(``prompt_tokens_details.cached_tokens``), which are ``cache_read_input_tokens``;
``output_tokens`` is ``completion_tokens``. Nothing is refused: every completion has a
Message.
"""

from __future__ import annotations

import hashlib
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


def _input(arguments: Any) -> dict[str, Any]:
    if not isinstance(arguments, str):
        arguments = "" if arguments is None else json.dumps(arguments)
    try:
        parsed = json.loads(arguments)
    except (ValueError, RecursionError):
        parsed = None
    return parsed if isinstance(parsed, dict) else {"arguments": arguments}


def tool_use_id(custom_id: str, index: int) -> str:
    """A stable id for a tool call that came without one: the same job's call at the same
    index gets the same id, a tool_result can answer it."""
    digest = hashlib.sha256(f"{custom_id}\n{index}".encode()).hexdigest()[:24]
    return f"toolu_{digest}"


def _blocks(message: dict[str, Any], custom_id: str) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for text in (message.get("content"), message.get("refusal")):
        if text:
            blocks.append({"type": "text", "text": text})
    for index, call in enumerate(message.get("tool_calls") or []):
        function = call.get("function") or call.get("custom") or {}
        raw = function.get("arguments", function.get("input", ""))
        call_id = call.get("id")
        block = {
            "type": "tool_use",
            "id": call_id
            if isinstance(call_id, str) and call_id
            else tool_use_id(custom_id, index),
            "name": str(function.get("name") or ""),
            "input": _input(raw),
        }
        blocks.append(block)
    return blocks


def known_finish(reason: Any) -> bool:
    """Whether a finish_reason has an Anthropic stop_reason that means it."""
    return reason is None or reason in STOP_REASONS


def _stop_reason(reason: Any, blocks: list[dict[str, Any]]) -> str | None:
    if reason == "length":
        return "max_tokens"
    if any(block["type"] == "tool_use" for block in blocks):
        return "tool_use"
    return STOP_REASONS.get(reason, "end_turn") if reason else None


def message_usage(counted: Usage) -> dict[str, Any]:
    """A usage in an Anthropic Message's form: every prompt token under the count it was
    billed as (plain input, cache read, cache write: 5-minute or 1-hour)."""
    written, hour = counted.cache_write_tokens, counted.cache_write_1h_tokens
    return {
        "input_tokens": counted.uncached_prompt_tokens,
        "output_tokens": counted.completion_tokens,
        "cache_read_input_tokens": counted.cached_tokens,
        "cache_creation_input_tokens": written,
        "cache_creation": {
            "ephemeral_5m_input_tokens": written - hour,
            "ephemeral_1h_input_tokens": hour,
        },
    }


def completion_to_message(
    completion: dict[str, Any], custom_id: str = "", booked: Usage | None = None
) -> dict[str, Any]:
    """The Anthropic Message of a chat completion (its first choice); ``custom_id``: the
    job's, for the ids of tool calls that came without one; ``booked``: the usage booked
    for an answer that came without any (its worst case), reported in its place."""
    choices = completion.get("choices") or [{}]
    choice = choices[0]
    blocks = _blocks(choice.get("message") or {}, custom_id)
    return {
        "id": completion.get("id", ""),
        "type": "message",
        "role": "assistant",
        "model": completion.get("model", ""),
        "content": blocks,
        "stop_reason": _stop_reason(choice.get("finish_reason"), blocks),
        "stop_sequence": None,
        "usage": message_usage(booked or Usage.from_api(completion.get("usage"))),
    }
