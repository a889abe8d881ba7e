"""The budget's prompt bound covers every field a provider bills, framing included.

Whole requests (``prompt_corpus.adversarial_requests``: empty messages, one-letter
names, parameterless tools, one-letter arguments, empty tool calls, 20 KB schemas) are
rendered as harmony (OpenAI, o200k and cl100k) and DeepSeek-V3.2 render them and counted
with the real tokenizers, and by OpenAI's cookbook recipe. The bound must stay above
every count with a margin: it is what makes "the budget is never exceeded" hold.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from prompt_corpus import adversarial_requests, big_tool
from prompt_renderers import counters

from chatbatch.core.pricing import PROMPT_FIELDS, estimate_prompt_tokens, prompt_token_bound

MARGIN = 1.25  # the least headroom over the most any rendering bills


@pytest.fixture(scope="module")
def counts() -> dict[str, Callable[[dict[str, Any]], int]]:
    return counters()


@pytest.mark.parametrize("name", list(adversarial_requests()))
def test_the_bound_is_above_every_rendering_with_a_margin(name: str, counts):
    body = adversarial_requests()[name]
    bound = prompt_token_bound(body)
    for renderer, count in counts.items():
        assert bound >= MARGIN * count(body), (renderer, bound, count(body))


USER = {"role": "user", "content": "hi"}
CALL = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"q":1}'}}
FIELDS: dict[str, Any] = {
    "tools": [big_tool(2000)],
    "functions": [big_tool(2000)["function"]],
    "tool_choice": {"type": "function", "function": {"name": "lookup_records"}},
    "function_call": {"name": "lookup_records"},
    "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}},
}


@pytest.mark.parametrize("field", PROMPT_FIELDS)
def test_every_billed_request_field_adds_at_least_its_bytes(field: str):
    assert set(FIELDS) == set(PROMPT_FIELDS)
    plain = {"messages": [USER]}
    added = prompt_token_bound(plain | {field: FIELDS[field]}) - prompt_token_bound(plain)
    assert added >= len(json.dumps(FIELDS[field], ensure_ascii=False).encode())
    assert estimate_prompt_tokens(plain | {field: FIELDS[field]}) > estimate_prompt_tokens(plain)


@pytest.mark.parametrize(
    "message",
    [
        USER | {"name": "a" * 50},
        {"role": "user", "content": [{"type": "text", "text": "x" * 50}]},
        {
            "role": "assistant",
            "tool_calls": [CALL | {"function": {"name": "f" * 50, "arguments": "{}"}}],
        },
        {
            "role": "assistant",
            "tool_calls": [CALL | {"function": {"name": "f", "arguments": "9" * 50}}],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "r" * 50},
    ],
)
def test_every_billed_message_field_adds_at_least_its_bytes(message: dict[str, Any]):
    plain = {"messages": [USER]}
    assert prompt_token_bound({"messages": [USER, message]}) - prompt_token_bound(plain) >= 50


def test_arguments_count_as_rendered_one_by_one():
    """DeepSeek renders each top-level argument in its own block, re-serialised with
    spaces: a compact argument string is not its own bound."""
    compact = json.dumps({"v": list(range(100))}, separators=(",", ":"))
    spaced = json.dumps({"v": list(range(100))})
    body = {
        "messages": [
            {
                "role": "assistant",
                "tool_calls": [CALL | {"function": {"name": "f", "arguments": compact}}],
            }
        ]
    }
    assert prompt_token_bound(body) >= len(spaced)
    keys = {
        "messages": [
            {
                "role": "assistant",
                "tool_calls": [
                    CALL
                    | {
                        "function": {
                            "name": "f",
                            "arguments": json.dumps({str(i): 1 for i in range(100)}),
                        }
                    }
                ],
            }
        ]
    }
    one = {
        "messages": [
            {
                "role": "assistant",
                "tool_calls": [
                    CALL
                    | {"function": {"name": "f", "arguments": json.dumps({"0": list(range(100))})}}
                ],
            }
        ]
    }
    assert prompt_token_bound(keys) > prompt_token_bound(one) + 100 * 8
