"""Anthropic's Messages answers: a streamed one assembled from its events
(``MessageStream``), and a 200 of a kind ``anthropic`` provider read into its Message and
usage (``read_message``).

Events: ``message_start`` (the Message with empty content and its first usage),
``content_block_start`` / ``content_block_delta`` (``text_delta``, ``input_json_delta``,
``thinking_delta``, ``signature_delta``; others, such as ``citations_delta``, ignored) /
``content_block_stop``, ``message_delta`` (``stop_reason``, ``stop_sequence`` and usage
counts, cumulative: they replace the earlier ones, except a null one, which keeps the earlier
count as the anthropic SDK's accumulator does), ``message_stop``, ``ping``. An
``error`` event, a corrupt event or a stream that ends before ``message_stop`` raises
``StreamError``: the request was sent, so the attempt is maybe billed
(``chatbatch.provider.attempt``).
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from chatbatch.core.pricing import Usage
from chatbatch.provider.errors import error_text
from chatbatch.provider.sse import SSEEvent, StreamError, event_object, read_stream

# delta type -> (the block's field it extends, the delta's field)
_DELTAS = {
    "text_delta": ("text", "text"),
    "thinking_delta": ("thinking", "thinking"),
    "input_json_delta": ("partial_json", "partial_json"),
}


class MessageStream:
    """Assembles a Messages stream's events into one Message (``result``)."""

    def __init__(self) -> None:
        self.done = False
        self._message: dict[str, Any] | None = None
        self._blocks: dict[int, dict[str, Any]] = {}

    def add(self, event: SSEEvent) -> None:
        if self.done:
            return
        data = event_object(event, "event")
        kind = data.get("type") or event.event
        if kind == "error":
            raise StreamError(f"error event in stream: {error_text(data)[0]}")
        try:
            self._apply(kind, data)
        except (AttributeError, KeyError, TypeError, ValueError) as err:
            raise StreamError(f"corrupt stream event ({kind}): {err!r}") from None

    def _apply(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "message_start":
            self._message = dict(data["message"])
            self._message["usage"] = dict(self._message.get("usage") or {})
            return
        if kind == "ping":
            return
        message = self._message
        if message is None:
            raise ValueError(f"{kind} before message_start")
        if kind == "content_block_start":
            self._blocks[int(data["index"])] = dict(data["content_block"])
        elif kind == "content_block_delta":
            self._delta(self._blocks[int(data["index"])], data["delta"])
        elif kind == "content_block_stop":
            block = self._blocks[int(data["index"])]
            if "partial_json" in block or block.get("type") == "tool_use":
                raw = block.pop("partial_json", "")
                block["input"] = json.loads(raw) if raw else block.get("input") or {}
        elif kind == "message_delta":
            message.update(data.get("delta") or {})
            counts = (data.get("usage") or {}).items()
            message["usage"].update({k: v for k, v in counts if v is not None})
        elif kind == "message_stop":
            self.done = True

    @staticmethod
    def _delta(block: dict[str, Any], delta: dict[str, Any]) -> None:
        kind = delta["type"]
        if kind in _DELTAS:
            field, source = _DELTAS[kind]
            block[field] = str(block.get(field) or "") + str(delta[source])
        elif kind == "signature_delta":
            block["signature"] = delta["signature"]

    def result(self) -> dict[str, Any]:
        if self._message is None or not self.done:
            raise StreamError("stream ended before message_stop")
        content = [block for _, block in sorted(self._blocks.items())]
        return self._message | {"content": content}


async def read_message(response: httpx.Response) -> tuple[dict[str, Any], Usage | None]:
    """The Message of a 200 (JSON or a stream) and its usage (None: the answer had none, or
    one without ``input_tokens``, which Anthropic's Usage requires: the prompt was billed, so
    the attempt is booked at its worst case as an answer without usage).
    Raises ``StreamError`` for an answer that cannot be read."""
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        message = await read_stream(response, MessageStream())
    else:
        try:
            message = json.loads(await response.aread())
        except ValueError as err:
            raise StreamError(f"200 with a body that is not valid JSON: {err}") from None
        if not isinstance(message, dict) or not isinstance(message.get("content"), list):
            raise StreamError("200 with a body that is not a Message")
    usage = message.get("usage")
    if not usage or usage.get("input_tokens") is None:
        return message, None  # no usage, or one without its input count: the worst case
    try:
        return message, Usage.from_anthropic(usage)
    except (AttributeError, TypeError, ValueError) as err:
        raise StreamError(f"200 with a malformed usage block: {err}") from None
