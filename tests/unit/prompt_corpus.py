"""Chat requests whose framing outweighs their text, to check the budget's prompt bound
(``test_prompt_bound.py``, ``bench/bench_prompt_bound.py``), and a large tool schema."""

from __future__ import annotations

import json
from typing import Any


def _tool(name: str, parameters: dict[str, Any] | None = None, description: str = "") -> dict:
    function: dict[str, Any] = {"name": name}
    if description:
        function["description"] = description
    if parameters is not None:
        function["parameters"] = parameters
    return {"type": "function", "function": function}


def _call(index: int, name: str, arguments: str) -> dict[str, Any]:
    return {
        "id": f"c{index}",
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }


def big_tool(size: int = 20_000) -> dict[str, Any]:
    """A tool definition of about ``size`` bytes: described properties of every kind."""
    props: dict[str, Any] = {}
    i = 0
    while len(json.dumps(props)) < size:
        kind = ("string", "integer", "boolean", "array", "object")[i % 5]
        prop: dict[str, Any] = {"type": kind, "description": f"the {i}th field, as the user said"}
        if kind == "string" and i % 2:
            prop["enum"] = [f"v{j}" for j in range(6)]
        if kind == "array":
            prop["items"] = {"type": "string"}
        if kind == "object":
            prop["properties"] = {"x": {"type": "number"}, "y": {"type": "number"}}
        props[f"field_{i}"] = prop
        i += 1
    schema = {"type": "object", "properties": props, "required": list(props)[:10]}
    return _tool("lookup_records", schema, "Look records up by any of their fields.")


def _nested(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


def adversarial_requests() -> dict[str, dict[str, Any]]:
    """Request bodies (as chatbatch sends them) whose framing outweighs their text."""
    user = {"role": "user", "content": ""}
    tiny_props = {
        "type": "object",
        "properties": {chr(97 + i % 26) * (1 + i // 26): {} for i in range(200)},
    }
    history = [user]
    for i in range(40):
        history.append({"role": "assistant", "tool_calls": [_call(i, "f", "{}")]})
        history.append({"role": "tool", "tool_call_id": f"c{i}", "content": ""})
    many_args = json.dumps({chr(97 + i % 26) * (1 + i // 26): 1 for i in range(200)})
    return {
        "one empty message": {"messages": [user]},
        "one letter": {"messages": [{"role": "user", "content": "a"}]},
        "200 empty messages": {"messages": [user] * 200},
        "200 one-letter names": {"messages": [{"role": "user", "content": "", "name": "a"}] * 200},
        "100 empty text parts": {
            "messages": [{"role": "user", "content": [{"type": "text", "text": ""}] * 100}]
        },
        "system and developer": {
            "messages": [
                {"role": "system", "content": ""},
                {"role": "developer", "content": "d"},
                user,
            ]
        },
        "one tool, no parameters": {"messages": [user], "tools": [_tool("f")]},
        "60 tools, no parameters": {"messages": [user], "tools": [_tool("f")] * 60},
        "200 empty properties": {"messages": [user], "tools": [_tool("f", tiny_props)]},
        "enum of 500 letters": {
            "messages": [user],
            "tools": [
                _tool(
                    "f",
                    {
                        "type": "object",
                        "properties": {"e": {"enum": [chr(97 + i % 26) for i in range(500)]}},
                    },
                )
            ],
        },
        "nesting 40 deep": {"messages": [user], "tools": [_tool("f", _nested(40))]},
        "20 KB tool": {"messages": [{"role": "user", "content": "find it"}], "tools": [big_tool()]},
        "CJK tool": {
            "messages": [{"role": "user", "content": "天气"}],
            "tools": [
                _tool(
                    "天气",
                    {
                        "type": "object",
                        "properties": {"城市": {"type": "string", "description": "城市名称"}},
                    },
                    "查询天气。",
                )
            ],
        },
        "40 empty tool calls and results": {"messages": history},
        "8 parallel calls, one result": {
            "messages": [
                user,
                {"role": "assistant", "tool_calls": [_call(i, "f", "{}") for i in range(8)]},
                {"role": "tool", "tool_call_id": "c0", "content": ""},
            ]
        },
        "200 one-letter arguments": {
            "messages": [
                user,
                {"role": "assistant", "tool_calls": [_call(0, "f", many_args)]},
                {"role": "tool", "tool_call_id": "c0", "content": ""},
            ]
        },
        "compact number array argument": {
            "messages": [
                user,
                {
                    "role": "assistant",
                    "tool_calls": [
                        _call(0, "f", json.dumps({"v": list(range(300))}, separators=(",", ":")))
                    ],
                },
                {"role": "tool", "tool_call_id": "c0", "content": ""},
            ]
        },
        "json_object format": {"messages": [user], "response_format": {"type": "json_object"}},
        "json_schema format": {
            "messages": [user],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "x", "strict": True, "schema": _nested(20)},
            },
        },
        "tool choice": {
            "messages": [user],
            "tools": [_tool("f")],
            "tool_choice": {"type": "function", "function": {"name": "f"}},
        },
        "everything at once": {
            "messages": [{"role": "system", "content": "be brief"}, *history[:9]],
            "tools": [big_tool(4000), _tool("g")],
            "tool_choice": "required",
            "response_format": {"type": "json_object"},
        },
    }
