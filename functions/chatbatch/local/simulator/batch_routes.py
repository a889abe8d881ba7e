"""The batch APIs' routes (``BatchApis``): OpenAI's Files and Batches under ``/v1/files``
and ``/v1/batches`` (its key check and error shape), Anthropic's Message Batches under
``/v1/messages/batches`` (its header checks and error shape), and the admin's
``POST /admin/batches/{id}/expire`` and ``.../fail`` for either. The engine hands every
request here first (``route``: None when it is not a batch route) and lets every batch
advance on every request (``advance``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from chatbatch.local.simulator import messages as anthropic
from chatbatch.local.simulator.anthropic_batches import AnthropicBatches
from chatbatch.local.simulator.api import ApiError, authorize, invalid
from chatbatch.local.simulator.batch_files import FileStore
from chatbatch.local.simulator.openai_batches import Answer, OpenAIBatches
from chatbatch.local.simulator.replies import Reply, json_reply
from chatbatch.local.simulator.settings import SimulatorSettings

FORCED = ("expire", "fail")


class BatchApis:
    """The file store and both providers' batches, as HTTP routes."""

    def __init__(
        self,
        chat_line: Answer,
        message_line: Answer,
        settings: Callable[[], SimulatorSettings],
        unix: Callable[[float], float],
    ) -> None:
        self._settings, self._unix = settings, unix
        self.files = FileStore()
        self.openai = OpenAIBatches(self.files, chat_line, settings, lambda now: int(unix(now)))
        self.anthropic = AnthropicBatches(message_line, settings, unix)

    def advance(self, now: float) -> None:
        self.openai.advance(now)
        self.anthropic.advance(now)

    def route(
        self,
        method: str,
        route: str,
        query: dict[str, str],
        headers: dict[str, str],
        body: bytes,
        now: float,
    ) -> Reply | None:
        parts = route.strip("/").split("/")
        if parts[0] in ("files", "batches"):
            authorize(self._settings().api_key, headers)
            return self._openai(method, parts, query, headers, body, now)
        if parts[:2] == ["messages", "batches"]:
            anthropic.authorize(self._settings().api_key, headers)
            return self._anthropic(method, parts[2:], query, headers, body, now)
        return None

    def force(self, batch_id: str, action: str, now: float, host: str) -> dict[str, Any]:
        """``POST /admin/batches/{id}/expire`` or ``.../fail``."""
        if action not in FORCED:
            raise ApiError(404, f"Unknown admin action: batches/{action}.", code="unknown_url")
        if batch_id.startswith("msgbatch_"):
            return self.anthropic.force(batch_id, action, now, host)
        return self.openai.force(batch_id, action, now)

    def _openai(
        self,
        method: str,
        parts: list[str],
        query: dict[str, str],
        headers: dict[str, str],
        body: bytes,
        now: float,
    ) -> Reply:
        kind, rest = parts[0], parts[1:]
        files, batches = self.files, self.openai
        if kind == "files" and method == "POST" and not rest:
            content_type = headers.get("content-type", "")
            return json_reply(200, files.upload(content_type, body, int(self._unix(now))).body())
        if kind == "files" and method == "GET" and len(rest) == 1:
            return json_reply(200, files.get(rest[0]).body())
        if kind == "files" and method == "GET" and rest[1:] == ["content"]:
            data = files.get(rest[0]).data
            return Reply(200, {"content-type": "application/octet-stream"}, data)
        if kind == "files" and method == "DELETE" and len(rest) == 1:
            return json_reply(200, files.delete(rest[0]))
        if kind == "batches" and method == "POST" and not rest:
            return json_reply(200, batches.create(body, now))
        if kind == "batches" and method == "GET" and not rest:
            return json_reply(200, batches.page(query, now))
        if kind == "batches" and method == "GET" and len(rest) == 1:
            return json_reply(200, batches.get(rest[0], now))
        if kind == "batches" and method == "POST" and rest[1:] == ["cancel"]:
            return json_reply(200, batches.cancel(rest[0], now))
        raise ApiError(404, f"Unknown request URL: {method} /v1/{'/'.join(parts)}.")

    def _anthropic(
        self,
        method: str,
        rest: list[str],
        query: dict[str, str],
        headers: dict[str, str],
        body: bytes,
        now: float,
    ) -> Reply:
        host = headers.get("host", "127.0.0.1")
        batches = self.anthropic
        if method == "POST" and not rest:
            return json_reply(200, batches.create(body, now, host))
        if method == "GET" and not rest:
            return json_reply(200, batches.page(query, now, host))
        if method == "GET" and len(rest) == 1:
            return json_reply(200, batches.get(rest[0], now, host))
        if method == "POST" and rest[1:] == ["cancel"]:
            return json_reply(200, batches.cancel(rest[0], now, host))
        if method == "GET" and rest[1:] == ["results"]:
            data = batches.results(rest[0], now)
            return Reply(200, {"content-type": "application/x-jsonl"}, data)
        if method == "DELETE" and len(rest) == 1:
            return json_reply(200, batches.delete(rest[0], now))
        raise anthropic.AnthropicError(404, f"Unknown request URL: {method} {'/'.join(rest)}")


def admin_target(action: str) -> tuple[str, str] | None:
    """``batches/{id}/{expire|fail}`` -> (id, action), or None for another admin action."""
    parts = action.split("/")
    if parts[0] != "batches":
        return None
    if len(parts) != 3:
        raise invalid("Expected POST /admin/batches/{id}/expire or /fail.", None)
    return parts[1], parts[2]
