"""An OpenAI ``/v1/chat/completions`` request body -> an Anthropic ``/v1/messages`` body.

Pure function on JSON dicts (``chat_to_messages``); a body that cannot be sent without
changing its answer or its bill raises ``Untranslatable`` naming the field (the submit
check turns it into a ``JobError`` naming the job).

Translated:

- ``system`` and ``developer`` messages before the conversation -> top-level ``system``
  (text blocks, in order); user and assistant content strings as given; ``text`` parts ->
  text blocks; ``image_url`` parts -> image blocks (a ``data:`` URL -> a base64 source, an
  ``http(s)`` URL -> a url source); a part's ``prompt_cache_breakpoint`` ->
  ``cache_control: {"type": "ephemeral"}`` (Anthropic's 5-minute cache: the OpenAI ttl is
  not kept; the write is priced at ``cache_write_per_m``); an assistant ``refusal`` ->
  text.
- assistant ``tool_calls`` (function) -> ``tool_use`` blocks (arguments parsed: a JSON
  object); ``tool`` messages -> ``tool_result`` blocks in a user turn, consecutive results
  (and a user message right after them) merged into one turn.
- ``tools`` (function) -> ``{name, description, input_schema, strict}``; ``tool_choice``
  auto/none/required/named -> auto/none/any/tool; ``parallel_tool_calls: false`` ->
  ``disable_parallel_tool_use``.
- ``max_tokens`` / ``max_completion_tokens`` -> ``max_tokens`` (the output cap is always
  sent); ``temperature`` (at most 1), ``top_p``, ``top_k`` under ``anthropic-version``
  2023-06-01 only (``sampling``): version 2026-10-21, which the anthropic SDK 2.x types
  describe, refuses them even at their defaults, so there they are refused at submit;
  ``stop`` -> ``stop_sequences``;
  ``stream``; ``metadata.user``, ``user`` or ``safety_identifier`` -> ``metadata.user_id``;
  ``service_tier`` auto -> auto.

Dropped (they change neither the answer nor the bill): ``stream_options`` (Anthropic
always reports usage), ``n: 1``, ``logprobs: false``, ``response_format`` text, ``store``,
the rest of ``metadata``, ``prompt_cache_key`` / ``prompt_cache_retention`` /
``prompt_cache_options`` (OpenAI routing hints), ``modalities: ["text"]``.

Refused (``Untranslatable``): ``n`` > 1 (Anthropic answers once: the bill and the answer
would differ), ``logprobs`` / ``top_logprobs``, ``seed``, ``presence_penalty``,
``frequency_penalty``, ``logit_bias``, ``min_p``, ``repetition_penalty``,
``response_format`` json_object / json_schema, ``reasoning_effort``, ``verbosity``,
another ``service_tier``, ``temperature`` above 1, ``functions`` / ``function_call`` and
``function`` messages (legacy), custom tools and custom tool calls, a message ``name``, a
system or developer message after the conversation has begun, a conversation that ends
with an assistant turn (Anthropic continues it as a prefill), tool-call arguments that
are not a JSON object, an image URL that is neither ``data:`` (jpeg, png, gif, webp) nor
``http(s)``, and any key this module does not know.
"""

from __future__ import annotations

import json
import re
from typing import Any

from chatbatch.core.untranslatable import Untranslatable

ROLE_SYSTEM = ("system", "developer")
IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
DATA_URL = re.compile(r"^data:(?P<type>[\w/+.-]+);base64,(?P<data>.*)$", re.DOTALL)
EPHEMERAL = {"type": "ephemeral"}

# OpenAI request keys with no Anthropic equivalent, and why sending without them is wrong
REFUSED: dict[str, str] = {
    "seed": "Anthropic has no seed: the answer would not be the reproducible one asked for",
    "presence_penalty": "Anthropic has no presence penalty: the answer would differ",
    "frequency_penalty": "Anthropic has no frequency penalty: the answer would differ",
    "logit_bias": "Anthropic has no logit bias: the answer would differ",
    "min_p": "Anthropic has no min_p: the answer would differ",
    "repetition_penalty": "Anthropic has no repetition penalty: the answer would differ",
    "top_logprobs": "Anthropic returns no log probabilities",
    "reasoning_effort": "Anthropic's extended thinking is set otherwise (a budget of "
    "thinking tokens), not translated",
    "verbosity": "Anthropic has no verbosity setting: the answer would differ",
    "functions": "legacy functions are not translated; give tools",
    "function_call": "legacy function_call is not translated; give tool_choice",
}
# keys dropped when they have these values (they change nothing)
NEUTRAL: dict[str, Any] = {"n": 1, "logprobs": False, "modalities": ["text"]}
DROPPED = frozenset(
    {
        "stream_options",
        "store",
        "prompt_cache_key",
        "prompt_cache_retention",
        "prompt_cache_options",
    }
)


SAMPLING = ("temperature", "top_p", "top_k")
# the first anthropic-version that refuses the sampling parameters
NO_SAMPLING_VERSION = "2026-10-21"
MAX_BREAKPOINTS = 4  # blocks marked cache_control Anthropic takes in one request


def takes_sampling(anthropic_version: str) -> bool:
    """Whether requests under ``anthropic_version`` may carry temperature, top_p, top_k."""
    return anthropic_version < NO_SAMPLING_VERSION


def chat_to_messages(body: dict[str, Any], *, sampling: bool = True) -> dict[str, Any]:
    """The Messages request for a chat completions request ``body``; raises
    ``Untranslatable`` for a field that cannot be sent unchanged in meaning and cost.
    ``sampling``: whether the API version takes temperature, top_p and top_k."""
    out: dict[str, Any] = {"model": body["model"]}
    system, turns = _conversation(body.get("messages") or [])
    cap = body.get("max_tokens", body.get("max_completion_tokens"))
    out["max_tokens"] = cap
    out["messages"] = turns
    if system:
        out["system"] = system
    for key, value in body.items():
        if key in SAMPLING and not sampling and value is not None:
            raise sampling_refused(key)
        _param(key, value, body, out)
    _check_breakpoints(body.get("messages") or [])
    return out


def sampling_refused(field: str) -> Untranslatable:
    """The refusal of ``field`` (temperature, top_p or top_k) under an anthropic-version
    that refuses the sampling parameters."""
    key = field.rsplit(".", 1)[-1]
    return Untranslatable(
        field,
        f"anthropic-version {NO_SAMPLING_VERSION} and later refuse {key} (even at its "
        "default): remove it, or set the provider's anthropic_version to 2023-06-01",
    )


def _check_breakpoints(messages: list[dict[str, Any]]) -> None:
    """Each ``prompt_cache_breakpoint`` becomes a block marked cache_control, of which
    Anthropic takes at most 4."""
    marked = [
        f"messages[{index}].content[{at}].prompt_cache_breakpoint"
        for index, message in enumerate(messages)
        for at, part in enumerate(_parts(message.get("content")))
        if part.get("prompt_cache_breakpoint") is not None
    ]
    if len(marked) > MAX_BREAKPOINTS:
        raise Untranslatable(
            marked[MAX_BREAKPOINTS],
            f"{len(marked)} cache breakpoints: Anthropic takes at most {MAX_BREAKPOINTS} "
            "blocks marked cache_control; keep the last 4",
        )


def _parts(content: Any) -> list[dict[str, Any]]:
    return [p for p in content if isinstance(p, dict)] if isinstance(content, list) else []


def _param(key: str, value: Any, body: dict[str, Any], out: dict[str, Any]) -> None:
    if key in ("model", "messages", "max_tokens", "max_completion_tokens") or key in DROPPED:
        return
    if key in NEUTRAL:
        if value != NEUTRAL[key] and value is not None:
            raise Untranslatable(key, _neutral_refusal(key, value))
        return
    if key in REFUSED:
        raise Untranslatable(key, f"not translated to Anthropic: {REFUSED[key]}; remove it")
    if value is None:
        return
    if key == "temperature":
        if value > 1:
            raise Untranslatable(
                key, f"Anthropic's temperature is 0 to 1 (got {value}); give at most 1"
            )
        out[key] = value
    elif key in ("top_p", "top_k", "stream"):
        out[key] = value
    elif key == "stop":
        out["stop_sequences"] = [value] if isinstance(value, str) else list(value)
    elif key in ("user", "safety_identifier", "metadata"):
        user = value.get("user") if key == "metadata" else value
        if isinstance(user, str):
            out["metadata"] = {"user_id": user}
    elif key == "service_tier":
        if value != "auto":
            raise Untranslatable(key, f"only auto is translated to Anthropic (got {value!r})")
        out[key] = "auto"
    elif key == "response_format":
        if value.get("type") != "text":
            raise Untranslatable(
                "response_format.type",
                f"{value.get('type')!r} is not translated to Anthropic (no structured output "
                "mode here): the answer would not be held to the format; remove it",
            )
    elif key == "tools":
        out["tools"] = [_tool(index, tool) for index, tool in enumerate(value)]
    elif key == "tool_choice":
        out["tool_choice"] = out.get("tool_choice", {}) | _tool_choice(value)
    elif key == "parallel_tool_calls":
        if value is False:
            choice = out.get("tool_choice") or _tool_choice(body.get("tool_choice") or "auto")
            out["tool_choice"] = choice | {"disable_parallel_tool_use": True}
    else:
        raise Untranslatable(
            key, "not translated to Anthropic (chatbatch does not know its equivalent); remove it"
        )


def _neutral_refusal(key: str, value: Any) -> str:
    if key == "n":
        return (
            f"Anthropic answers one choice per request (got n={value}): the answer and the "
            "bill would differ; send n copies of the job instead"
        )
    if key == "logprobs":
        return "Anthropic returns no log probabilities; remove it"
    return f"only {NEUTRAL[key]!r} is translated to Anthropic (got {value!r})"


def _tool(index: int, tool: dict[str, Any]) -> dict[str, Any]:
    if tool.get("type") != "function":
        raise Untranslatable(
            f"tools[{index}].type", f"{tool.get('type')!r}: only function tools are translated"
        )
    function = tool["function"]
    out: dict[str, Any] = {
        "name": function["name"],
        "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
    }
    if function.get("description") is not None:
        out["description"] = function["description"]
    if function.get("strict") is not None:
        out["strict"] = function["strict"]
    return out


def _tool_choice(choice: Any) -> dict[str, Any]:
    simple = {"auto": "auto", "none": "none", "required": "any"}
    if isinstance(choice, str) and choice in simple:
        return {"type": simple[choice]}
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "tool", "name": choice["function"]["name"]}
    raise Untranslatable("tool_choice", f"{choice!r} is not translated to Anthropic")


# --- messages ------------------------------------------------------------------------


def _conversation(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[Any]]:
    """(system blocks, turns): leading system/developer messages hoisted; the rest as
    Anthropic turns, consecutive turns of one role merged."""
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        role = message.get("role")
        if message.get("name") is not None:
            raise Untranslatable(
                f"{where}.name", "Anthropic has no message names: the prompt would differ"
            )
        if role in ROLE_SYSTEM:
            if turns:
                raise Untranslatable(
                    f"{where}.role",
                    f"a {role} message after the conversation began: Anthropic takes the "
                    "system prompt before it only; move it to the start",
                )
            system += _blocks(where, message.get("content"))
            continue
        if role == "user":
            blocks = _blocks(where, message.get("content"))
        elif role == "assistant":
            blocks = _assistant(where, message)
        elif role == "tool":
            blocks = [_tool_result(where, message)]
        else:
            raise Untranslatable(f"{where}.role", f"{role!r} messages are not translated")
        anthropic_role = "assistant" if role == "assistant" else "user"
        if turns and turns[-1]["role"] == anthropic_role:
            turns[-1]["content"] = _as_blocks(turns[-1]["content"]) + blocks
        else:
            turns.append({"role": anthropic_role, "content": _plain(message, blocks)})
    if turns and turns[-1]["role"] == "assistant":
        raise Untranslatable(
            f"messages[{len(messages) - 1}].role",
            "the conversation ends with an assistant turn: Anthropic would continue that "
            "turn (a prefill) instead of answering after it; end with a user or tool message",
        )
    return system, turns


def _plain(message: dict[str, Any], blocks: list[dict[str, Any]]) -> Any:
    """A content string stays a string (as the line gave it); anything else is blocks."""
    content = message.get("content")
    if (
        isinstance(content, str)
        and message.get("role") in ("user", "assistant")
        and not (message.get("tool_calls"))
    ):
        return content
    return blocks


def _as_blocks(content: Any) -> list[dict[str, Any]]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else list(content)


def _blocks(where: str, content: Any) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": _nonblank(f"{where}.content", content)}]
    return [_part(f"{where}.content[{index}]", part) for index, part in enumerate(content)]


def _nonblank(field: str, text: str) -> str:
    """Anthropic refuses an empty or whitespace-only text (OpenAI takes it)."""
    if not text.strip():
        raise Untranslatable(
            field,
            f"{'empty' if not text else 'whitespace only'}: Anthropic refuses empty or "
            "whitespace-only text; give it some text or remove it",
        )
    return text


def _part(where: str, part: dict[str, Any]) -> dict[str, Any]:
    kind = part.get("type")
    if kind == "text":
        block: dict[str, Any] = {"type": "text", "text": _nonblank(f"{where}.text", part["text"])}
    elif kind == "refusal":
        block = {"type": "text", "text": _nonblank(f"{where}.refusal", part["refusal"])}
    elif kind == "image_url":
        block = {"type": "image", "source": _image_source(where, part["image_url"]["url"])}
    else:
        raise Untranslatable(f"{where}.type", f"{kind!r} parts are not translated")
    if part.get("prompt_cache_breakpoint") is not None:
        block["cache_control"] = dict(EPHEMERAL)
    return block


def _image_source(where: str, url: str) -> dict[str, Any]:
    found = DATA_URL.match(url)
    if found:
        if found["type"] not in IMAGE_TYPES:
            raise Untranslatable(
                f"{where}.image_url.url",
                f"a {found['type']} image: Anthropic takes {', '.join(IMAGE_TYPES)}",
            )
        return {"type": "base64", "media_type": found["type"], "data": found["data"]}
    if url.startswith(("https://", "http://")):
        return {"type": "url", "url": url}
    raise Untranslatable(
        f"{where}.image_url.url", "neither a data: URL (base64) nor an http(s) URL"
    )


def _assistant(where: str, message: dict[str, Any]) -> list[dict[str, Any]]:
    # an empty text beside tool calls says nothing (Anthropic refuses empty text blocks)
    content = message.get("content")
    calls = bool(message.get("tool_calls"))
    if isinstance(content, str):
        blocks = [] if calls and content == "" else _blocks(where, content)
    else:
        blocks = [
            _part(f"{where}.content[{index}]", part)
            for index, part in enumerate(content or [])
            if not (calls and part.get("type") == "text" and part.get("text") == "")
        ]
    if message.get("refusal"):
        blocks.append({"type": "text", "text": message["refusal"]})
    for index, call in enumerate(message.get("tool_calls") or []):
        at = f"{where}.tool_calls[{index}]"
        if call.get("type") != "function":
            raise Untranslatable(f"{at}.type", "only function tool calls are translated")
        try:
            arguments = json.loads(call["function"]["arguments"] or "{}")
        except ValueError:
            arguments = None
        if not isinstance(arguments, dict):
            raise Untranslatable(
                f"{at}.function.arguments",
                "not a JSON object: Anthropic's tool_use input is an object",
            )
        blocks.append(
            {
                "type": "tool_use",
                "id": call["id"],
                "name": call["function"]["name"],
                "input": arguments,
            }
        )
    if not blocks:
        raise Untranslatable(
            f"{where}.content",
            "an assistant message with no content and no tool calls: Anthropic refuses "
            "empty messages; remove it",
        )
    return blocks


def _tool_result(where: str, message: dict[str, Any]) -> dict[str, Any]:
    content = message.get("content")
    result: dict[str, Any] = {"type": "tool_result", "tool_use_id": message["tool_call_id"]}
    result["content"] = content if isinstance(content, str) else _blocks(where, content)
    return result
