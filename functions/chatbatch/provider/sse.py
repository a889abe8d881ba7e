"""Server-sent events: the ``text/event-stream`` parser and the chat stream reader.

``SSEParser`` turns bytes (in any chunks) into ``SSEEvent``s; ``ChatStream`` assembles
``chat.completion.chunk`` events into the same ``chat.completion`` body a non-streamed
call returns, usage included; ``read_stream`` reads a streamed response with both.
A stream that cannot be trusted raises ``StreamError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from chatbatch.provider.errors import error_text

AFTER_DONE_S = 1.0  # how long the end of a stream is awaited after data: [DONE]


class StreamError(ValueError):
    """A stream that cannot be trusted: corrupt, cut short, or carrying an error event."""


@dataclass(frozen=True)
class SSEEvent:
    data: str
    event: str = "message"
    id: str | None = None


def event_object(event: SSEEvent, what: str) -> dict[str, Any]:
    """An event's data as a JSON object; ``StreamError`` (``corrupt stream {what}``) if not."""
    try:
        data = json.loads(event.data)
    except ValueError as err:
        raise StreamError(f"corrupt stream {what}: {err}") from None
    if not isinstance(data, dict):
        raise StreamError(f"corrupt stream {what}: not a JSON object")
    return data


_EOL = re.compile(rb"\r\n|\r|\n")


class SSEParser:
    """Incremental ``text/event-stream`` parser (the WHATWG rules), fed bytes in any chunks.

    Lines end in CRLF, LF or CR, wherever the chunk boundaries fall (a CR at the end of a
    chunk waits for the next byte); ``:`` lines are comments; a blank line dispatches
    the event's ``data`` lines joined by newlines. Bytes that are not UTF-8 raise
    ``StreamError`` (a stream we verify end to end must not be silently repaired).
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[str] = []
        self._event = ""
        self._id: str | None = None

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        buffer, pos, events = self._buffer + chunk, 0, []
        while match := _EOL.search(buffer, pos):
            if match.group() == b"\r" and match.end() == len(buffer):
                break
            event = self._line(buffer[pos : match.start()])
            pos = match.end()
            if event is not None:
                events.append(event)
        self._buffer = buffer[pos:]
        return events

    def close(self) -> list[SSEEvent]:
        """End of stream: a last line or event left without its terminator is kept."""
        tail = self.feed(b"\n") if self._buffer else []
        last = self._dispatch()
        return tail + ([last] if last else [])

    def _line(self, raw: bytes) -> SSEEvent | None:
        if not raw:
            return self._dispatch()
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise StreamError(f"event stream is not UTF-8: {err.reason}") from None
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = value
        return None

    def _dispatch(self) -> SSEEvent | None:
        data, event = self._data, self._event
        self._data, self._event = [], ""
        if not data:
            return None
        return SSEEvent(data="\n".join(data), event=event or "message", id=self._id)


@dataclass
class _Choice:
    role: str = "assistant"
    content: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    tool_calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    finish_reason: str | None = None

    def add(self, delta: dict[str, Any]) -> None:
        self.role = delta.get("role") or self.role
        if isinstance(delta.get("content"), str):
            self.content.append(delta["content"])
        if isinstance(delta.get("reasoning_content"), str):
            self.reasoning.append(delta["reasoning_content"])
        for call in delta.get("tool_calls") or []:
            self._tool_call(call)

    def _tool_call(self, call: dict[str, Any]) -> None:
        slot = self.tool_calls.setdefault(
            int(call.get("index", len(self.tool_calls))),
            {"id": None, "type": "function", "function": {"name": "", "arguments": ""}},
        )
        slot["id"] = call.get("id") or slot["id"]
        slot["type"] = call.get("type") or slot["type"]
        function = call.get("function") or {}
        slot["function"]["name"] += function.get("name") or ""
        slot["function"]["arguments"] += function.get("arguments") or ""

    def message(self) -> dict[str, Any]:
        text = "".join(self.content)
        message: dict[str, Any] = {"role": self.role, "content": text}
        if self.reasoning:
            message["reasoning_content"] = "".join(self.reasoning)
        if self.tool_calls:
            message["tool_calls"] = [self.tool_calls[i] for i in sorted(self.tool_calls)]
            message["content"] = text or None
        return message


class ChatStream:
    """Assembles ``chat.completion.chunk`` events into one ``chat.completion`` body.

    Copes with ``choices: null`` or ``[]`` (the usage chunk of
    ``stream_options.include_usage``), usage on a chunk that still has choices (DeepSeek),
    and ``reasoning_content`` / ``tool_calls`` deltas. A chunk that is not a JSON object,
    an ``error`` event, or a stream without ``data: [DONE]`` raises ``StreamError``.
    """

    def __init__(self) -> None:
        self.done = False
        self._head: dict[str, Any] = {}
        self._choices: dict[int, _Choice] = {}
        self._usage: dict[str, Any] | None = None

    def add(self, event: SSEEvent) -> None:
        if self.done:
            return
        if event.data.strip() == "[DONE]":
            self.done = True
            return
        chunk = event_object(event, "chunk")
        if chunk.get("error"):
            raise StreamError(f"error event in stream: {error_text(chunk)[0]}")
        try:
            self._apply(chunk)
        except (AttributeError, TypeError, ValueError) as err:
            raise StreamError(f"corrupt stream chunk: {err}") from None

    def _apply(self, chunk: dict[str, Any]) -> None:
        for key in ("id", "created", "model", "system_fingerprint"):
            if chunk.get(key) is not None:
                self._head.setdefault(key, chunk[key])
        if isinstance(chunk.get("usage"), dict):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            self._add_choice(choice)

    def _add_choice(self, choice: Any) -> None:
        delta = choice.get("delta") if isinstance(choice, dict) else None
        if not isinstance(choice, dict) or not isinstance(delta, dict | None):
            raise StreamError("corrupt stream chunk: a choice without a delta object")
        slot = self._choices.setdefault(int(choice.get("index") or 0), _Choice())
        slot.add(delta or {})
        slot.finish_reason = choice.get("finish_reason") or slot.finish_reason

    def result(self) -> dict[str, Any]:
        if not self.done:
            raise StreamError("stream ended without data: [DONE]")
        if not self._choices:
            raise StreamError("stream carried no choices")
        choices = [
            {"index": i, "message": c.message(), "finish_reason": c.finish_reason}
            for i, c in sorted(self._choices.items())
        ]
        body = {"id": None, "object": "chat.completion", "created": None, "model": None}
        return body | self._head | {"choices": choices, "usage": self._usage}


# --- Reading a streamed response -------------------------------------------------


class EventStream(Protocol):
    """What assembles a stream's events into one body (``ChatStream``, or Anthropic's
    ``MessageStream``): ``done`` once the stream's last event came."""

    done: bool

    def add(self, event: SSEEvent) -> None: ...

    def result(self) -> dict[str, Any]: ...


async def read_stream(
    response: httpx.Response, stream: EventStream | None = None
) -> dict[str, Any]:
    """The body a ``text/event-stream`` response assembles to (``stream``: a
    ``ChatStream`` unless another is given)."""
    parser = SSEParser()
    stream = ChatStream() if stream is None else stream
    chunks = response.aiter_bytes()
    async for chunk in chunks:
        for event in parser.feed(chunk):
            stream.add(event)
        if stream.done:
            await _read_rest(chunks)
            break
    else:
        for event in parser.close():
            stream.add(event)
    return stream.result()


async def _read_rest(chunks: AsyncIterator[bytes]) -> None:
    """After ``[DONE]``: read the end of the body (so the connection can be reused), but
    never lose the answer to a server that does not end it."""
    with contextlib.suppress(httpx.HTTPError, TimeoutError):
        async with asyncio.timeout(AFTER_DONE_S):
            async for _ in chunks:
                pass
