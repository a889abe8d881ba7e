"""Prices, usage and cost, exact to the token.

Money is a ``Decimal``: prices per 1M tokens have at most six decimals, so a usage's
cost is exact with no float rounding. The budget ledger stores integer nano-dollars
(``to_nanos``), rounding a cost up so the ledger never under-counts.

Token estimation (for the rate limiter, before any call) is offline: no tokenizer is
downloaded. ASCII text counts one token per 4 characters, every non-ASCII character one
token, over every billed field; framing is OpenAI's published counting recipe
(``ESTIMATE_FRAMING``: 4 per message, 3 per request, 12 + 10 per tool for tools).
Measured against o200k, cl100k and DeepSeek's tokenizer (``tests/unit/test_token_estimates.py``,
``bench/bench_tokens.py``): English prose and code within 5% in aggregate (single texts
0.5-1.5x), JSON 0.81-0.85x, short prompts 1.25-1.3x, CJK 0.94-1.55x. The limiter
reconciles every estimate with the real usage.

The budget reserves at a true upper bound instead (``prompt_token_bound``), over every
field a provider bills as input (``PROMPT_FIELDS`` and the messages: content strings,
text and refusal parts, ``name``, assistant ``tool_calls`` (function arguments or custom
input) and ``function_call``, ``refusal``, tool results; an ``image_url`` part at the
model's ``image_input_tokens``, the most one image bills). Every token of a byte-level
BPE covers at least one byte, so a field never has more tokens than its UTF-8 bytes (3-6x
the real count on that corpus); fields are counted as ``json.dumps`` renders them, with
spaces and unescaped, the longer form. Around the text a provider adds framing, which
``BOUND_FRAMING`` covers with a margin. Measured with the real offline tokenizers on the
published renderings (``tests/unit/prompt_renderers.py``; ``bench/bench_prompt_bound.py``
prints the figures, ``tests/unit/test_prompt_bound.py`` checks them), the most any
rendering adds:

- per request: 67 tokens (harmony, OpenAI's format for gpt-oss: the system message with
  identity, dates and channels, and the reply primer); bound 96.
- per message: 4 (harmony, OpenAI's cookbook), 3 (DeepSeek-V3.2); bound 8. Per ``name``:
  1-2 beyond its bytes; bound 4.
- tools: DeepSeek-V3.2 adds a fixed instruction block of 253 tokens (harmony 38, the
  cookbook 12 + 10 per tool); bound 384 + 16 per tool.
- a tool call with its result: 42 (DeepSeek), 26 (harmony); bound 24 per assistant turn
  with calls + 16 per call + 24 per result, plus the longest called name again per result
  (harmony's result header repeats it). Per top-level argument DeepSeek adds 16 tokens
  (each argument in its own DSML block, re-serialised with spaces); bound 16 beyond the
  longer of the sent and the re-serialised text.
- ``response_format`` json_object: 23 (DeepSeek), 19 (harmony); bound 32 per field.

The same bound reads Anthropic Messages params (an Anthropic-form job's, kept as given):
``system`` as one more message, image blocks at ``image_input_tokens``, ``tool_use`` as a
tool call (its JSON ``input`` as arguments), ``tool_result`` as a tool result, thinking
blocks by their text and signature, with the same framing constants; Anthropic's own
rendering is not measured here, so the margin above is what covers it.

On requests built so that framing outweighs text (200 empty messages, 60 parameterless
tools, 200 one-letter arguments, 40 empty tool calls, 20 KB tool schemas, nested response
schemas) the bound is 1.48-7.4x the most any rendering counts; the test requires 1.25x.
That bound, with the output cap always sent (``Job.request_body``) times ``n``, is what
makes "the budget is never exceeded" hold for certain, not just usually. Request
parameters that could bill beyond it are refused at submit (``request_params``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from chatbatch.core.config import Model

MILLION = Decimal(1_000_000)
NANOS_PER_USD = Decimal(1_000_000_000)


class Usage(BaseModel):
    """A provider's usage block, normalised: ``completion_tokens`` is every output token
    billed, reasoning included.

    OpenAI reports cache hits in ``prompt_tokens_details.cached_tokens``; DeepSeek in
    ``prompt_cache_hit_tokens`` / ``prompt_cache_miss_tokens``.

    Reasoning tokens (``completion_tokens_details.reasoning_tokens``) are inside the
    reported ``completion_tokens`` at OpenAI and DeepSeek, where ``total_tokens`` = prompt
    + completion. Some gateways report them outside, with ``total_tokens`` larger. The rule
    (``_outside``): output billed but left out of the reported ``completion_tokens`` is

    - ``total_tokens`` - prompt - completion when ``total_tokens`` is larger (whatever the
      details say: the provider billed those tokens, priced as output);
    - at least ``reasoning_tokens`` when they are more than the reported completion (they
      cannot be inside it), whether ``total_tokens`` is missing or not;
    - otherwise nothing: reasoning is inside, not counted twice. A ``total_tokens`` smaller
      than prompt + completion is ignored (the parts are billed, the sum never lowers them).

    That output is added to ``completion_tokens``, so the cost, the cost record, the batch
    counters and the limiter all carry the completion tokens billed.

    Anthropic (``from_anthropic``) bills three kinds of input: ``input_tokens`` (at
    ``input_per_m``), ``cache_creation_input_tokens`` (written to the cache, at
    ``cache_write_per_m``) and ``cache_read_input_tokens`` (at ``cached_input_per_m``);
    ``prompt_tokens`` is all three, ``cached_tokens`` the reads, ``cache_write_tokens`` the
    writes. Of the writes, those to the 1-hour cache (``usage.cache_creation.
    ephemeral_1h_input_tokens``, a block marked ``cache_control.ttl = "1h"``) are
    ``cache_write_1h_tokens``, at ``cache_write_1h_per_m``.
    """

    model_config = ConfigDict(frozen=True)

    prompt_tokens: int = Field(default=0, ge=0)
    completion_tokens: int = Field(default=0, ge=0)
    cached_tokens: int = Field(default=0, ge=0)
    reasoning_tokens: int = Field(default=0, ge=0)
    cache_write_tokens: int = Field(default=0, ge=0)
    cache_write_1h_tokens: int = Field(default=0, ge=0)  # of cache_write_tokens

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def uncached_prompt_tokens(self) -> int:
        """Prompt tokens billed at the input price: neither read from nor written to a cache."""
        return max(0, self.prompt_tokens - self.cached_tokens - self.cache_write_tokens)

    @classmethod
    def from_anthropic(cls, usage: Mapping[str, Any]) -> Usage:
        """An Anthropic Message's ``usage`` (a missing or null count is 0)."""
        counts = {}
        for name in (
            "input_tokens",
            "output_tokens",
            "cache_creation_input_tokens",
            "cache_read_input_tokens",
        ):
            value = int(usage.get(name) or 0)
            if value < 0:
                raise ValueError(f"{name} is {value}: a count is never negative")
            counts[name] = value
        ttls = usage.get("cache_creation") or {}
        five, hour = (int(ttls.get(f"ephemeral_{t}_input_tokens") or 0) for t in ("5m", "1h"))
        if min(five, hour) < 0:
            raise ValueError(f"cache_creation is {ttls}: a count is never negative")
        written = max(counts["cache_creation_input_tokens"], five + hour)
        read = counts["cache_read_input_tokens"]
        return cls(
            prompt_tokens=counts["input_tokens"] + written + read,
            completion_tokens=counts["output_tokens"],
            cached_tokens=read,
            cache_write_tokens=written,
            cache_write_1h_tokens=hour,
        )

    @classmethod
    def from_api(cls, usage: dict[str, Any] | None) -> Usage:
        """A chat.completion's usage. One translated from an Anthropic Message keeps
        Anthropic's own counts under ``usage.anthropic`` (``translate``): they are read
        from there, cache writes included, as is an Anthropic usage block itself."""
        if not usage:
            return cls()
        if isinstance(usage.get("anthropic"), dict):
            return cls.from_anthropic(usage["anthropic"])
        if "input_tokens" in usage:
            return cls.from_anthropic(usage)
        prompt = int(usage.get("prompt_tokens") or 0)
        details = usage.get("prompt_tokens_details") or {}
        cached = details.get("cached_tokens")
        if cached is None:
            cached = usage.get("prompt_cache_hit_tokens")
            if cached is None and usage.get("prompt_cache_miss_tokens") is not None:
                cached = prompt - int(usage["prompt_cache_miss_tokens"])
        completion_details = usage.get("completion_tokens_details") or {}
        completion = int(usage.get("completion_tokens") or 0)
        if completion < 0:
            raise ValueError(f"completion_tokens is {completion}: a count is never negative")
        reasoning = int(completion_details.get("reasoning_tokens") or 0)
        total = usage.get("total_tokens")
        reported_total = None if total is None else int(total)
        return cls(
            prompt_tokens=prompt,
            completion_tokens=completion + _outside(prompt, completion, reasoning, reported_total),
            cached_tokens=min(prompt, max(0, int(cached or 0))),
            reasoning_tokens=reasoning,
        )


def _outside(prompt: int, completion: int, reasoning: int, total: int | None) -> int:
    """Output tokens billed but not in the reported ``completion_tokens`` (see ``Usage``)."""
    beyond = total - prompt - completion if total is not None else 0
    return max(0, beyond, reasoning if reasoning > completion else 0)


def cost(usage: Usage, model: Model) -> Decimal:
    """The exact USD cost of a usage at a model's prices."""
    return (
        usage.uncached_prompt_tokens * model.input_per_m
        + usage.cached_tokens * model.cached_input_per_m
        + (usage.cache_write_tokens - usage.cache_write_1h_tokens) * model.cache_write_price
        + usage.cache_write_1h_tokens * model.cache_write_1h_price
        + usage.completion_tokens * model.output_per_m
    ) / MILLION


def worst_case_prompt(
    prompt_tokens: int, completion_tokens: int, model: Model, one_hour: bool = True
) -> Usage:
    """The costliest usage a prompt bound and an output bound allow: every prompt token at
    the highest input price the model has (a cache-write price when it is above the input
    price: a whole prompt may be written to the cache; the 1-hour write's unless
    ``one_hour`` is False, for a request that marks no block ``ttl = "1h"``), every output
    token used."""
    hour = one_hour and model.cache_write_1h_price > model.cache_write_price
    write = model.cache_write_1h_price if hour else model.cache_write_price
    written = prompt_tokens if write > model.input_per_m else 0
    return Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        cache_write_tokens=written,
        cache_write_1h_tokens=written if hour else 0,
    )


def worst_case_cost(
    prompt_tokens: int, max_tokens: int, model: Model, one_hour: bool = True
) -> Decimal:
    """The most a request can cost: every prompt token at its highest price, every output
    token used."""
    return cost(worst_case_prompt(prompt_tokens, max_tokens, model, one_hour), model)


def writes_one_hour(value: Any) -> bool:
    """Whether a request (or any part of it) marks a block ``cache_control.ttl = "1h"``:
    only such a request can be billed 1-hour cache writes."""
    if isinstance(value, dict):
        control = value.get("cache_control")
        if isinstance(control, dict) and control.get("ttl") == "1h":
            return True
        return any(writes_one_hour(v) for v in value.values())
    if isinstance(value, list):
        return any(writes_one_hour(v) for v in value)
    return False


def to_nanos(usd: Decimal) -> int:
    """USD -> integer nano-dollars for the ledger, rounded up."""
    return int((usd * NANOS_PER_USD).to_integral_value(rounding=ROUND_CEILING))


def from_nanos(nanos: int) -> Decimal:
    return Decimal(nanos) / NANOS_PER_USD


@dataclass(frozen=True)
class Framing:
    """Tokens a provider adds around what a request says (beyond the text itself)."""

    request: int  # once: the reply primer, and any system preamble the provider adds
    message: int  # per message: its role and delimiters
    name: int  # per message ``name``
    part: int  # per content part
    tool_calls: int  # per assistant message that carries tool calls (their wrapper)
    tool_call: int  # per tool call
    argument: int  # per top-level argument of a tool call (rendered one by one)
    tool_result: int  # per ``tool`` message (it also repeats the called function's name)
    tools: int  # once, when the request defines tools or functions (the instructions)
    tool: int  # per tool or function definition
    field: int  # per other billed request field (tool_choice, function_call, response_format)


# OpenAI's published counting recipe: what the rate limiter's estimate assumes.
ESTIMATE_FRAMING = Framing(
    request=3, message=4, name=1, part=0, tool_calls=3, tool_call=3, argument=0,
    tool_result=3, tools=12, tool=10, field=3,
)  # fmt: skip
# Above the most any published rendering adds (see the module docstring), with a margin.
BOUND_FRAMING = Framing(
    request=96, message=8, name=4, part=4, tool_calls=24, tool_call=16, argument=16,
    tool_result=24, tools=384, tool=16, field=32,
)  # fmt: skip
# Request fields the provider bills as prompt tokens (besides the messages).
PROMPT_FIELDS = ("tools", "functions", "tool_choice", "function_call", "response_format")
# Anthropic content blocks counted beyond their text (``_block``)
ANTHROPIC_BLOCKS = ("tool_use", "tool_result", "thinking", "redacted_thinking", "search_result")


def estimate_text_tokens(text: str) -> int:
    ascii_chars = sum(1 for c in text if c < "\x80") if not text.isascii() else len(text)
    return math.ceil(ascii_chars / 4) + (len(text) - ascii_chars)


def text_token_bound(text: str) -> int:
    """The most tokens a text can be: a byte-level BPE token is >= 1 byte."""
    return len(text.encode())


def _as_text(value: Any) -> str:
    """A field as a provider renders it into the prompt: ``json.dumps``' default spacing,
    non-ASCII unescaped (DeepSeek's template; more bytes than the compact form)."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _arguments(raw: str, count: Callable[[str], int], framing: Framing) -> int:
    """A tool call's arguments: the text as sent, or as re-serialised argument by argument
    (DeepSeek renders each top-level argument in its own block), whichever is more."""
    try:
        parsed = json.loads(raw)
    except (ValueError, RecursionError):
        return count(raw)
    keys = len(parsed) if isinstance(parsed, dict) else 0
    return max(count(raw), count(_as_text(parsed))) + framing.argument * keys


def _block(
    block: Mapping[str, Any], count: Callable[[str], int], framing: Framing, images: int
) -> int:
    """An Anthropic content block beyond text and image: a tool call sent back (its id,
    name and input), a tool result (its id and content), a thinking block (its text and
    signature), a redacted one (its data) or a search result (its source, title and text
    blocks)."""
    kind = block.get("type")
    if kind == "search_result":
        named = count(str(block.get("source") or "")) + count(str(block.get("title") or ""))
        return named + _content(block.get("content") or "", count, framing, images)
    if kind == "tool_use":
        arguments = json.dumps(block.get("input"), ensure_ascii=False)
        used = framing.tool_calls + framing.tool_call + count(block.get("id") or "")
        return used + count(block.get("name") or "") + _arguments(arguments, count, framing)
    if kind == "tool_result":
        content = _content(block.get("content") or "", count, framing, images)
        return framing.tool_result + count(block.get("tool_use_id") or "") + content
    texts = (block.get("thinking"), block.get("signature"), block.get("data"))
    return sum(count(text) for text in texts if isinstance(text, str))


def _part(part: Any, count: Callable[[str], int], framing: Framing, image_tokens: int) -> int:
    """A content part (or an Anthropic content block): its text (or refusal) as rendered;
    an image at ``image_tokens``."""
    if not isinstance(part, dict):
        return 0
    if part.get("type") in ("image_url", "image"):
        return image_tokens
    if part.get("type") in ANTHROPIC_BLOCKS:
        return _block(part, count, framing, image_tokens)
    return count(_as_text(part.get("text", part.get("refusal", ""))))


def _content(content: Any, count: Callable[[str], int], framing: Framing, images: int) -> int:
    if isinstance(content, str):
        return count(content)
    parts = content if isinstance(content, list) else []
    return sum(framing.part + _part(p, count, framing, images) for p in parts)


def _call(call: Mapping[str, Any], count: Callable[[str], int], framing: Framing) -> int:
    """A tool call sent back (a function's name and JSON arguments, or a custom tool's
    name and free-text input), or a legacy ``function_call``."""
    function = call.get("function") or call.get("custom") or call
    raw = function.get("arguments", function.get("input", ""))
    total = framing.tool_call + count(call.get("id") or "") + count(function["name"])
    return total + _arguments(raw, count, framing)


def _called_name(call: Mapping[str, Any]) -> str:
    return str((call.get("function") or call.get("custom") or {}).get("name", ""))


def _prompt_tokens(
    body: Mapping[str, Any], count: Callable[[str], int], framing: Framing, images: int
) -> int:
    messages: list[Mapping[str, Any]] = body.get("messages") or []
    calls = [call for m in messages for call in m.get("tool_calls") or []]
    calls += [m["function_call"] for m in messages if m.get("function_call")]
    longest_name = max((count(_called_name(c) or c.get("name", "")) for c in calls), default=0)
    total = framing.request
    if body.get("system"):  # Anthropic's system prompt: a message of its own
        total += framing.message + _content(body["system"], count, framing, images)
    for m in messages:
        total += framing.message + _content(m.get("content"), count, framing, images)
        if m.get("name") is not None:
            total += framing.name + count(m["name"])
        total += count(m.get("tool_call_id") or "") + count(m.get("refusal") or "")
        if m.get("tool_calls") or m.get("function_call"):
            total += framing.tool_calls
        for call in [*(m.get("tool_calls") or []), *filter(None, [m.get("function_call")])]:
            total += _call(call, count, framing)
        if m.get("role") in ("tool", "function"):
            total += framing.tool_result + longest_name
    for key in PROMPT_FIELDS:
        value = body.get(key)
        if value is None:
            continue
        total += count(_as_text(value))
        if key in ("tools", "functions") and isinstance(value, list):
            total += framing.tools + framing.tool * len(value)
        else:
            total += framing.field
    return total


def prompt_token_bound(body: Mapping[str, Any], image_tokens: int = 0) -> int:
    """The most prompt tokens a request body can be billed: every billed field's UTF-8
    bytes (a byte-level BPE token is >= 1 byte) plus ``BOUND_FRAMING``, and
    ``image_tokens`` (the model's ``image_input_tokens``) per image part."""
    return _prompt_tokens(body, text_token_bound, BOUND_FRAMING, image_tokens)


def estimate_prompt_tokens(body: Mapping[str, Any], image_tokens: int = 0) -> int:
    """Estimated prompt tokens of a request body (for the rate limiter); an image part
    counts at ``image_tokens``, its worst case."""
    return _prompt_tokens(body, estimate_text_tokens, ESTIMATE_FRAMING, image_tokens)
