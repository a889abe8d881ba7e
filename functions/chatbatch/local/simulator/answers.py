"""What the simulator answers: tokens counted, the deterministic answer to a conversation,
usage with cached prompt prefixes, and a completion's JSON body and SSE frames."""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

TOKEN_RE = re.compile(r"\w+|[^\w\s]")
MESSAGE_OVERHEAD_TOKENS = 4
REQUEST_OVERHEAD_TOKENS = 3
TOOLS_OVERHEAD_TOKENS = 12  # once per request that defines tools (OpenAI's recipe)
TOOL_OVERHEAD_TOKENS = 8  # per tool definition
FIELD_OVERHEAD_TOKENS = 3  # per other billed request field (tool_choice, response_format)
BILLED_FIELDS = ("tools", "functions", "tool_choice", "function_call", "response_format")
ECHO_WORDS = 8
FILLER_TEXT = (
    "the answer follows from the question as asked and nothing more is needed to see why "
    "each part fits with the rest of it so we stop here"
)
FILLER = tuple(FILLER_TEXT.split())


def count_tokens(text: str) -> int:
    return len(TOKEN_RE.findall(text))


def _content(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):
        texts = [p.get("text") or p.get("refusal") or "" for p in content if isinstance(p, dict)]
        return " ".join(texts)
    return content if isinstance(content, str) else ""


def message_tokens(message: dict[str, Any]) -> int:
    """A message's prompt tokens: its content, its name, its refusal and the tool calls it
    carries (a function's name and arguments, a custom tool's name and input)."""
    texts = [_content(message), str(message.get("name") or ""), str(message.get("refusal") or "")]
    for call in message.get("tool_calls") or []:
        function = call.get("function") or call.get("custom") if isinstance(call, dict) else None
        if isinstance(function, dict):
            texts += [str(function.get("name", "")), str(function.get("arguments", ""))]
            texts.append(str(function.get("input", "")))
    return MESSAGE_OVERHEAD_TOKENS + sum(count_tokens(t) for t in texts)


def field_tokens(body: dict[str, Any]) -> int:
    """Prompt tokens of the request's billed fields besides the messages: tool definitions,
    tool choice, response format (schemas included), each as its JSON text."""
    total = 0
    for key in BILLED_FIELDS:
        value = body.get(key)
        if value is None:
            continue
        total += count_tokens(json.dumps(value))
        if key in ("tools", "functions") and isinstance(value, list):
            total += TOOLS_OVERHEAD_TOKENS + TOOL_OVERHEAD_TOKENS * len(value)
        else:
            total += FIELD_OVERHEAD_TOKENS
    return total


def answer_for(
    messages: Sequence[dict[str, Any]],
    max_tokens: int | None = None,
    answer_tokens: int = 24,
    choice: int = 0,
) -> tuple[str, int, str]:
    """(content, completion tokens, finish reason) the simulator answers to ``messages``
    (choice ``choice`` of ``n``: each choice its own text)."""
    canonical = json.dumps(list(messages), sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:12]
    last_user = next((_content(m) for m in reversed(messages) if m.get("role") == "user"), "")
    tag = f"sim:{digest}" + (f"/{choice}" if choice else "")
    text = f"{tag} " + " ".join(last_user.split()[:ECHO_WORDS])
    words = [text.rstrip()]
    tokens = count_tokens(words[0])
    start = int(digest, 16)
    # filler up to answer_tokens, but never built past the cap that cuts it
    limit = answer_tokens if max_tokens is None else min(answer_tokens, max_tokens)
    while tokens < limit:
        words.append(FILLER[(start + tokens) % len(FILLER)])
        tokens += 1
    content = " ".join(words)
    if max_tokens is not None and max_tokens <= 0:  # reasoning took the whole cap
        return "", 0, "length"
    if max_tokens is not None and max(tokens, answer_tokens) > max_tokens:
        if tokens > max_tokens:
            content = content[: list(TOKEN_RE.finditer(content))[max_tokens - 1].end()]
        return content, max_tokens, "length"
    return content, tokens, "stop"


def stream_pieces(content: str, tokens_per_piece: int) -> list[str]:
    """``content`` split after every ``tokens_per_piece`` tokens; the pieces join back."""
    ends = [m.end() for m in TOKEN_RE.finditer(content)][tokens_per_piece - 1 :: tokens_per_piece]
    bounds = [0, *ends[:-1], len(content)] if ends else [0, len(content)]
    return [content[a:b] for a, b in itertools.pairwise(bounds) if b > a]


def usage_fields(
    prompt: int, cached: int, completion: int, reasoning: int = 0, outside: bool = False
) -> dict[str, Any]:
    """The usage block: ``completion`` visible tokens and ``reasoning`` ones, the reasoning
    inside ``completion_tokens`` (OpenAI, DeepSeek) or ``outside`` it (in the total only)."""
    fields = {
        "prompt_tokens": prompt,
        "completion_tokens": completion if outside else completion + reasoning,
        "total_tokens": prompt + completion + reasoning,
        "prompt_tokens_details": {"cached_tokens": cached},
        "prompt_cache_hit_tokens": cached,
        "prompt_cache_miss_tokens": prompt - cached,
    }
    if reasoning:
        fields["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    return fields


def prefix_digests(messages: Sequence[dict[str, Any]]) -> list[bytes]:
    running, digests = hashlib.sha256(), []
    for message in messages:
        running.update(json.dumps(message, sort_keys=True).encode())
        digests.append(running.copy().digest()[:16])
    return digests


def request_key(body: dict[str, Any]) -> str:
    """Identifies a request whatever its streaming mode: a retry of a job has the same key."""
    stripped = {k: v for k, v in body.items() if k not in {"stream", "stream_options"}}
    return hashlib.sha256(json.dumps(stripped, sort_keys=True).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Choice:
    content: str
    finish_reason: str


@dataclass(frozen=True)
class Answer:
    """One completion, as a JSON body (``body``) or as SSE frames (``chunk``, ``usage_chunk``).
    It holds ``n`` choices; the usage bills every choice's output (the prompt once)."""

    id: str
    created: int
    model: str
    choices: list[Choice]
    usage: dict[str, Any]

    def head(self, kind: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "fp_chatbatch_sim",
        }

    def body(self) -> dict[str, Any]:
        choices = [
            {
                "index": index,
                "message": {"role": "assistant", "content": choice.content},
                "logprobs": None,
                "finish_reason": choice.finish_reason,
            }
            for index, choice in enumerate(self.choices)
        ]
        return self.head("chat.completion") | {"choices": choices, "usage": self.usage}

    def chunk(self, delta: dict[str, Any], finish: str | None = None, index: int = 0) -> bytes:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        return _frame(self.head("chat.completion.chunk") | {"choices": [choice]})

    def usage_chunk(self, null_choices: bool) -> bytes:
        choices: list[Any] | None = None if null_choices else []
        return _frame(
            self.head("chat.completion.chunk") | {"choices": choices, "usage": self.usage}
        )


def _frame(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


KEEPALIVE_FRAME = b": keep-alive\n\n"
DONE_FRAME = b"data: [DONE]\n\n"
