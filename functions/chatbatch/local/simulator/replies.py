"""What goes over the wire: ``Reply`` (a status, headers and a body or SSE frames, when to
send it and what to do after), shaped from a generated ``Answer`` (``answer_reply``: a JSON
body or a stream, whole or damaged by a fault), and the replies of the faults that come
before any generation (``fault_reply``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from chatbatch.local.simulator.answers import (
    DONE_FRAME,
    KEEPALIVE_FRAME,
    Answer,
    count_tokens,
    stream_pieces,
)
from chatbatch.local.simulator.api import ApiError
from chatbatch.local.simulator.messages import AnthropicError, MessageAnswer, error_event
from chatbatch.local.simulator.settings import Fault, FaultKind, SimulatorSettings


@dataclass
class Reply:
    """What to send. ``events`` (delay before, SSE frame) make a streamed body."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    events: list[tuple[float, bytes]] | None = None
    delay_s: float = 0.0
    drop: bool = False  # close the connection after delay_s instead of answering
    reset: bool = False  # the close is a TCP reset
    on_delivered: Callable[[], None] | None = None


def json_reply(
    status: int, payload: Any, headers: dict[str, str] | None = None, delay_s: float = 0.0
) -> Reply:
    body = json.dumps(payload, separators=(",", ":")).encode()
    headers = {"content-type": "application/json", **(headers or {})}
    return Reply(status, headers, body, delay_s=delay_s)


def answer_reply(
    answer: Answer,
    settings: SimulatorSettings,
    *,
    stream: bool,
    include_usage: bool,
    fault: FaultKind | None,
) -> Reply:
    """The reply carrying a generated answer, shaped by the fault it meets (one of
    ``GENERATED``, or None)."""
    if fault is FaultKind.reset_after:  # generated (it took its time), then the reset
        return Reply(0, delay_s=_generation_s(answer, settings), drop=True, reset=True)
    if stream:
        include_usage = include_usage and fault is not FaultKind.no_usage
        reply = _stream(answer, settings, include_usage, fault)
    else:
        reply = _plain(answer, settings, fault)
    if fault is FaultKind.slow:
        reply.delay_s += settings.hang_s
    return reply


def _generation_s(answer: Answer, settings: SimulatorSettings) -> float:
    tokens = int(answer.usage["total_tokens"]) - int(answer.usage["prompt_tokens"])
    return (settings.latency_ms + settings.per_token_ms * tokens) / 1000


def _plain(answer: Answer, settings: SimulatorSettings, damage: FaultKind | None) -> Reply:
    """The answer as one JSON body: cut in half (``truncate``, ``corrupt``), without its
    ``usage`` key (``no_usage``)."""
    payload = answer.body()
    if damage is FaultKind.no_usage:
        del payload["usage"]
    reply = json_reply(200, payload, delay_s=_generation_s(answer, settings))
    if damage in (FaultKind.truncate, FaultKind.corrupt):
        reply.body = reply.body[: len(reply.body) // 2]
    return reply


def _stream(
    answer: Answer, settings: SimulatorSettings, include_usage: bool, damage: FaultKind | None
) -> Reply:
    """The answer as SSE frames: a stream cut before ``[DONE]`` (``truncate``: half the
    content, no finish, no usage) or with a broken chunk (``corrupt``)."""
    s = settings
    per_token_s = s.per_token_ms / 1000
    content: list[tuple[float, bytes]] = []
    finishes: list[tuple[float, bytes]] = []
    for index, choice in enumerate(answer.choices):
        content.append((0.0, answer.chunk({"role": "assistant", "content": ""}, None, index)))
        content += [
            (per_token_s * count_tokens(p), answer.chunk({"content": p}, None, index))
            for p in stream_pieces(choice.content, s.stream_chunk_tokens)
        ]
        finishes.append((0.0, answer.chunk({}, choice.finish_reason, index)))
    events = [(0.0, KEEPALIVE_FRAME)] if s.keepalive else []
    events.append(content.pop(0))
    half = len(content) // 2
    if damage is FaultKind.truncate:
        events += content[:half]
    else:
        if damage is FaultKind.corrupt:
            frame = content[half][1]
            content.insert(half, (0.0, frame[: len(frame) // 2] + b"\n\n"))
        events += content
        events += finishes
        if include_usage:
            events.append((0.0, answer.usage_chunk(s.null_usage_choices)))
        events.append((0.0, DONE_FRAME))
    headers = {"content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache"}
    return Reply(200, headers, events=events, delay_s=s.latency_ms / 1000)


def fault_reply(fault: Fault, settings: SimulatorSettings) -> Reply:
    if fault.kind is FaultKind.reset:
        return Reply(0, drop=True, reset=True)
    if fault.kind is FaultKind.hang:
        return Reply(0, drop=True, delay_s=settings.hang_s)
    headers = {}
    if fault.retry_after_s is not None:
        headers["retry-after"] = f"{fault.retry_after_s:g}"
    if fault.retry_after_ms is not None:
        headers["retry-after-ms"] = str(fault.retry_after_ms)
    if fault.kind is FaultKind.bad_request:
        message = "Invalid value for 'temperature' (injected)."
        raise ApiError(400, message, param="temperature", code="invalid_value", headers=headers)
    status, message, kind = {
        FaultKind.rate_limited: (429, "Rate limit reached (injected).", "requests"),
        FaultKind.error_500: (500, "The server had an error processing your request.", ""),
        FaultKind.error_503: (503, "The engine is currently overloaded.", ""),
    }[fault.kind]
    raise ApiError(status, message, type=kind or "server_error", headers=headers)


# --- Anthropic's /v1/messages ----------------------------------------------------------


def message_reply(
    answer: MessageAnswer, settings: SimulatorSettings, *, stream: bool, fault: FaultKind | None
) -> Reply:
    """A generated Message, as a JSON body or a stream, shaped by its fault (one of
    ``GENERATED``, or None) as the chat path's: ``truncate`` / ``corrupt`` cut the body
    or the stream (a stream cut before ``message_stop``, or an ``error`` event mid-way),
    ``no_usage`` leaves the usage out."""
    generation_s = (
        settings.latency_ms + settings.per_token_ms * answer.usage["output_tokens"]
    ) / 1000
    if fault is FaultKind.reset_after:
        return Reply(0, delay_s=generation_s, drop=True, reset=True)
    with_usage = fault is not FaultKind.no_usage
    if stream:
        per_token_s = settings.per_token_ms / 1000
        pieces = stream_pieces(answer.text, settings.stream_chunk_tokens)
        frames = answer.events(pieces, with_usage)
        half = 3 + len(pieces) // 2  # message_start, ping, block start, then half the text
        if fault is FaultKind.truncate:
            frames = frames[:half]
        elif fault is FaultKind.corrupt:
            frames = [*frames[:half], error_event("Overloaded")]
        events = [
            (per_token_s * count_tokens(f.decode()) if i > 2 else 0.0, f)
            for i, f in enumerate(frames)
        ]
        headers = {"content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache"}
        reply = Reply(200, headers, events=events, delay_s=settings.latency_ms / 1000)
    else:
        payload = answer.body()
        if not with_usage:
            del payload["usage"]
        reply = json_reply(200, payload, delay_s=generation_s)
        if fault in (FaultKind.truncate, FaultKind.corrupt):
            reply.body = reply.body[: len(reply.body) // 2]
    if fault is FaultKind.slow:
        reply.delay_s += settings.hang_s
    return reply


def anthropic_fault_reply(fault: Fault, settings: SimulatorSettings) -> Reply:
    """A fault before generation, in Anthropic's words: 429 ``rate_limit_error`` with
    ``retry-after``, 529 ``overloaded_error`` (for the chat path's 503), 500
    ``api_error``, 400 ``invalid_request_error``; resets and hangs as the chat path's."""
    if fault.kind in (FaultKind.reset, FaultKind.hang):
        return fault_reply(fault, settings)
    headers = {}
    if fault.retry_after_s is not None:
        headers["retry-after"] = f"{fault.retry_after_s:g}"
    status, message = {
        FaultKind.rate_limited: (
            429,
            "Number of request tokens has exceeded your rate limit (injected).",
        ),
        FaultKind.error_500: (500, "Internal server error (injected)."),
        FaultKind.error_503: (529, "Overloaded (injected)."),
        FaultKind.bad_request: (
            400,
            "temperature: Input should be less than or equal to 1 (injected)",
        ),
    }[fault.kind]
    raise AnthropicError(status, message, headers)
