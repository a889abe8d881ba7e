"""An Anthropic Message (the answer of ``/v1/messages``) -> an OpenAI ``chat.completion``.

Pure function on JSON dicts (``message_to_completion``); the result validates as
``openai.types.chat.ChatCompletion``.

- ``text`` blocks -> ``message.content`` (joined, in order; None when there is none);
  ``tool_use`` blocks -> ``message.tool_calls`` (function calls, ``arguments`` the input
  as a JSON string).
- ``stop_reason``: ``end_turn``, ``stop_sequence``, ``pause_turn`` -> ``stop``;
  ``max_tokens``, ``model_context_window_exceeded`` -> ``length``; ``tool_use`` ->
  ``tool_calls``; ``refusal`` -> ``content_filter``.
- ``usage``: ``prompt_tokens`` = input + cache creation + cache read tokens,
  ``prompt_tokens_details.cached_tokens`` = cache read, ``completion_tokens`` = output;
  the Anthropic counts are kept as given under ``usage.anthropic`` (so the cache writes
  stay visible).

Dropped: ``thinking`` and ``redacted_thinking`` blocks (their tokens are in the output
count and billed; OpenAI's completion has no place for them), ``stop_sequence`` (which
sequence stopped it), server-tool blocks (never asked for: chatbatch refuses server tools).
"""

from __future__ import annotations

import json
from typing import Any

FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def message_to_completion(message: dict[str, Any], created: int) -> dict[str, Any]:
    """The chat.completion for an Anthropic ``message``; ``created`` is its Unix time."""
    blocks = message.get("content") or []
    texts = [b["text"] for b in blocks if b.get("type") == "text"]
    calls = [
        {
            "id": b["id"],
            "type": "function",
            "function": {"name": b["name"], "arguments": json.dumps(b.get("input") or {})},
        }
        for b in blocks
        if b.get("type") == "tool_use"
    ]
    reply: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts else None,
        "refusal": None,
    }
    if calls:
        reply["tool_calls"] = calls
    completion: dict[str, Any] = {
        "id": message.get("id"),
        "object": "chat.completion",
        "created": created,
        "model": message.get("model"),
        "choices": [
            {
                "index": 0,
                "message": reply,
                "logprobs": None,
                "finish_reason": FINISH.get(message.get("stop_reason") or "", "stop"),
            }
        ],
    }
    usage = message.get("usage")
    if usage and usage.get("input_tokens") is not None:  # else none: booked at worst case
        completion["usage"] = completion_usage(usage)
    return completion


def completion_usage(usage: dict[str, Any]) -> dict[str, Any]:
    """An Anthropic usage block in OpenAI's form (the Anthropic counts kept beside)."""
    written = int(usage.get("cache_creation_input_tokens") or 0)
    read = int(usage.get("cache_read_input_tokens") or 0)
    prompt = int(usage.get("input_tokens") or 0) + written + read
    output = int(usage.get("output_tokens") or 0)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": output,
        "total_tokens": prompt + output,
        "prompt_tokens_details": {"cached_tokens": read},
        "anthropic": {
            "input_tokens": int(usage.get("input_tokens") or 0),
            "cache_creation_input_tokens": written,
            "cache_read_input_tokens": read,
            "output_tokens": output,
        }
        | ({"cache_creation": usage["cache_creation"]} if usage.get("cache_creation") else {}),
    }
