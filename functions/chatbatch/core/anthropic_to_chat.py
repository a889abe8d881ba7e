"""Anthropic Messages params -> an OpenAI /v1/chat/completions request body (pure, on dicts).

For an Anthropic-form job sent to an OpenAI-kind provider. In ``core`` (not ``translate``)
because an Anthropic line becomes a job with it (``core.job_lines``). What maps:

- ``system`` (a string or text blocks) -> a system message first; a ``system`` message of
  ``messages`` -> a system message in its place.
- text blocks -> text parts; image blocks -> ``image_url`` parts (a base64 source as a
  ``data:`` URL, a url source as given); a search_result block -> one text part (its
  title, source and texts; every byte of it counted in the worst case), in a tool_result
  as at the top level of a message.
- an assistant's ``tool_use`` blocks -> its ``tool_calls`` (``input`` as JSON
  ``arguments``); a user's ``tool_result`` blocks -> ``tool`` messages, before the rest of
  that user turn (OpenAI wants them right after the calls).
- ``stop_sequences`` -> ``stop`` (at most 4, OpenAI's limit); ``temperature``, ``top_p``,
  ``stream`` as given; ``tools`` -> function tools (``input_schema`` -> ``parameters``);
  ``tool_choice`` auto/none as is, any -> required, tool -> the named function, and
  ``disable_parallel_tool_use`` -> ``parallel_tool_calls: false``; ``metadata.user_id``
  -> ``user``; ``service_tier`` auto -> auto, standard_only -> default; ``max_tokens`` ->
  the model's cap parameter (``cap_param``; left out when None: ``Job`` adds it).

Dropped, because they cannot change the answer, nor make the bill exceed the worst case
(which counts every prompt token uncached): ``cache_control`` anywhere (OpenAI-kind
providers cache on their own), ``thinking: {"type": "disabled"}``, ``is_error: false``,
``citations: {"enabled": false}``, and an empty final assistant turn (Anthropic answers
it as a new turn, as a chat completion does).

Refused (``Untranslatable``, naming the field), because an OpenAI-kind provider cannot
honour them and the answer would differ: a final assistant turn with content (a prefill:
Anthropic continues it, a chat completion answers a new turn after it), ``thinking``
enabled or adaptive, ``top_k``,
thinking and redacted_thinking blocks, text ``citations`` and citations enabled on a
search result, images in a tool result,
``is_error: true``, more than 4 stop sequences, image ``transformations``, and a tool's
Anthropic-only keys (``allowed_callers``, ``defer_loading``, ``eager_input_streaming``,
``input_examples``). Documents and server tools are refused earlier, for every provider
(``core.anthropic_params``).
"""

from __future__ import annotations

import json
from typing import Any

from chatbatch.core.untranslatable import Untranslatable

MAX_STOP = 4  # OpenAI's limit on ``stop``
TOOL_KEYS = {"name", "description", "input_schema", "strict", "type", "cache_control"}
SERVICE_TIERS = {"auto": "auto", "standard_only": "default"}


def _refuse_openai(field: str, what: str) -> Untranslatable:
    return Untranslatable(
        field,
        f"{what}, which an OpenAI-kind provider cannot honour; remove it or send the job "
        "to an Anthropic model",
    )


def _text(block: dict[str, Any], field: str) -> dict[str, Any]:
    if block.get("citations"):
        raise _refuse_openai(f"{field}.citations", "citations")
    return {"type": "text", "text": block["text"]}


def _image(block: dict[str, Any], field: str) -> dict[str, Any]:
    if block.get("transformations"):
        raise _refuse_openai(f"{field}.transformations", "image transformations")
    source = block["source"]
    url = (
        f"data:{source['media_type']};base64,{source['data']}"
        if source["type"] == "base64"
        else source["url"]
    )
    return {"type": "image_url", "image_url": {"url": url}}


def _search_result(block: dict[str, Any], field: str) -> dict[str, Any]:
    if (block.get("citations") or {}).get("enabled"):
        raise _refuse_openai(f"{field}.citations", "citations")
    texts = [
        _text(part, f"{field}.content[{i}]")["text"] for i, part in enumerate(block["content"])
    ]
    heading = f"Search result: {block['title']}\nSource: {block['source']}"
    return {"type": "text", "text": "\n\n".join([heading, *texts])}


def _result_part(part: dict[str, Any], field: str) -> dict[str, Any]:
    """A tool result's text block, or a search result in it as one text part."""
    return (
        _search_result(part, field) if part.get("type") == "search_result" else _text(part, field)
    )


def _tool_result(block: dict[str, Any], field: str) -> dict[str, Any]:
    if block.get("is_error"):
        raise _refuse_openai(f"{field}.is_error", "a tool result marked as an error")
    content = block.get("content")
    if isinstance(content, list):
        for index, part in enumerate(content):
            if part.get("type") == "image":
                raise _refuse_openai(f"{field}.content[{index}]", "an image in a tool result")
        content = [_result_part(part, f"{field}.content[{i}]") for i, part in enumerate(content)]
    return {"role": "tool", "tool_call_id": block["tool_use_id"], "content": content or ""}


def _tool_call(block: dict[str, Any]) -> dict[str, Any]:
    arguments = json.dumps(block["input"], ensure_ascii=False)
    return {
        "id": block["id"],
        "type": "function",
        "function": {"name": block["name"], "arguments": arguments},
    }


def _turn(message: dict[str, Any], field: str) -> list[dict[str, Any]]:
    """One Anthropic message -> one or more chat messages (tool results first)."""
    role, content = message["role"], message["content"]
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for index, block in enumerate(content):
        where, kind = f"{field}.content[{index}]", block["type"]
        if kind == "text":
            parts.append(_text(block, where))
        elif kind == "image" and role == "user":
            parts.append(_image(block, where))
        elif kind == "search_result" and role == "user":
            parts.append(_search_result(block, where))
        elif kind == "tool_use" and role == "assistant":
            calls.append(_tool_call(block))
        elif kind == "tool_result" and role == "user":
            results.append(_tool_result(block, where))
        elif kind in ("thinking", "redacted_thinking"):
            raise _refuse_openai(where, f"a {kind} block")
        else:
            raise Untranslatable(where, f"a {role} message cannot hold a {kind} block")
    out = list(results)
    if role == "assistant":
        turn: dict[str, Any] = {"role": "assistant", "content": parts or None}
        if calls:
            turn["tool_calls"] = calls
        out.append(turn)
    elif parts or not results:
        out.append({"role": role, "content": parts})
    return out


def _tool(tool: dict[str, Any], field: str) -> dict[str, Any]:
    for key in tool.keys() - TOOL_KEYS:
        raise _refuse_openai(f"{field}.{key}", f"the tool option {key}")
    function = {"name": tool["name"], "parameters": tool["input_schema"]}
    function |= {k: tool[k] for k in ("description", "strict") if k in tool}
    return {"type": "function", "function": function}


def _tool_choice(choice: dict[str, Any]) -> tuple[Any, bool]:
    """(``tool_choice``, whether parallel tool calls are off)."""
    kind = choice["type"]
    named = {"type": "function", "function": {"name": choice.get("name")}}
    mapped = {"auto": "auto", "none": "none", "any": "required", "tool": named}[kind]
    return mapped, bool(choice.get("disable_parallel_tool_use"))


def _sampling(params: dict[str, Any], body: dict[str, Any]) -> None:
    if params.get("top_k") is not None:
        raise _refuse_openai("top_k", "top_k")
    thinking = params.get("thinking")
    if thinking and thinking.get("type") != "disabled":
        raise _refuse_openai("thinking", f"{thinking.get('type')} thinking")
    stop = params.get("stop_sequences")
    if stop:
        if len(stop) > MAX_STOP:
            raise Untranslatable(
                "stop_sequences",
                f"{len(stop)} stop sequences: an OpenAI-kind provider takes at most {MAX_STOP}",
            )
        body["stop"] = list(stop)
    body |= {k: params[k] for k in ("temperature", "top_p", "stream") if k in params}
    if (params.get("metadata") or {}).get("user_id") is not None:
        body["user"] = params["metadata"]["user_id"]
    if "service_tier" in params:
        body["service_tier"] = SERVICE_TIERS[params["service_tier"]]


def _system(system: Any) -> dict[str, Any]:
    if isinstance(system, str):
        return {"role": "system", "content": system}
    return {"role": "system", "content": [_text(b, f"system[{i}]") for i, b in enumerate(system)]}


def translated_messages(params: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The chat messages of valid Anthropic params, each with the field of the line it
    comes from (``system``, ``messages[i]``): an error on a translated message names it.
    An empty final assistant turn is dropped; one with content (a prefill) refused."""
    turns = list(enumerate(params["messages"]))
    if turns and turns[-1][1]["role"] == "assistant" and turns[-1][1]["content"] in ("", []):
        turns.pop()
    out = [("system", _system(params["system"]))] if params.get("system") else []
    for index, message in turns:
        field = f"messages[{index}]"
        if message["role"] == "system":
            out.append((field, _system(message["content"])))
        else:
            out.extend((field, turn) for turn in _turn(message, field))
    if turns and turns[-1][1]["role"] == "assistant":
        raise Untranslatable(
            f"messages[{turns[-1][0]}]",
            "a final assistant turn is a prefill: Anthropic continues it, an OpenAI-kind "
            "provider answers a new turn after it, so the answer would differ; end with a "
            "user turn or send the job to an Anthropic model",
        )
    return out


def messages_to_chat(params: dict[str, Any], cap_param: str | None = None) -> dict[str, Any]:
    """The chat request body for valid Anthropic params (``core.anthropic_params``);
    ``cap_param``: the name ``max_tokens`` is sent under (None: left out)."""
    messages = [message for _, message in translated_messages(params)]
    body: dict[str, Any] = {"model": params["model"], "messages": messages}
    if cap_param is not None:
        body[cap_param] = params["max_tokens"]
    _sampling(params, body)
    if params.get("tools"):
        body["tools"] = [_tool(t, f"tools[{i}]") for i, t in enumerate(params["tools"])]
    if params.get("tool_choice"):
        body["tool_choice"], serial = _tool_choice(params["tool_choice"])
        if serial:
            body["parallel_tool_calls"] = False
    return body
