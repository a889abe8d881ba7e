"""Chat client for OpenAI-compatible ``/v1/chat/completions`` endpoints.

``ProviderClient.complete`` makes one logical call: it sends the request, retries what a
retry can fix and gives up, in time, on what it cannot.

- One ``httpx.AsyncClient`` (connection pool) per provider and event loop, created on
  first use and reused by every later call on that loop: a Lambda worker that keeps one
  loop across invocations keeps its connections warm (the pools of a closed loop, e.g.
  after ``asyncio.run``, are dropped and rebuilt on the next loop). Timeouts (connect,
  read, write, pool) and the pool size come from ``[providers.NAME]``; every call also
  has an overall deadline that the caller sets and that bounds attempts and the waits
  between them.
- Retried: 429, 408, 409, 5xx, connect errors, resets, timeouts, a 200 whose body is not
  valid JSON, and a stream that is corrupt or ends without ``[DONE]``. The wait is
  exponential backoff with full jitter, unless the server names its own delay
  (``retry-after-ms``, then ``retry-after`` in seconds or as an HTTP date), capped by
  ``[retries]``. Any other status (400, 401, 403, 404, 422, ...) is a permanent error
  carrying the provider's message.
- ``stream: true`` is read with ``SSEParser`` and ``ChatStream`` and assembled into the
  same ``chat.completion`` body a non-streamed call returns, usage included.
- Every response's ``x-ratelimit-*`` headers become a ``RateLimitInfo``, handed with each
  ``Attempt`` to ``on_attempt`` (the adaptive rate limiter listens there).

The API key is sent as ``Authorization: Bearer`` and nowhere else: no exception text,
attempt record or log line carries it (any provider text echoing it is redacted).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import email.utils
import json
import math
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
from aws_lambda_powertools import Logger
from pydantic import BaseModel, ConfigDict

from chatbatch.core.config import Config, Provider, Retries, Timeouts
from chatbatch.core.pricing import Usage

logger = Logger(service="chatbatch", child=True)

RETRYABLE_STATUS = frozenset({408, 409, 429})
REDACTED = "[redacted]"
USER_AGENT = "chatbatch"
AFTER_DONE_S = 1.0  # how long the end of a stream is awaited after data: [DONE]


# --- Records handed to the caller ----------------------------------------------------


class Attempt(BaseModel):
    """One HTTP exchange of a call: its status (None if no response) or error, and timing."""

    model_config = ConfigDict(frozen=True)

    status: int | None = None
    error: str | None = None
    latency_ms: int = 0
    retry_after_s: float | None = None


class RateLimitInfo(BaseModel):
    """A response's ``x-ratelimit-*`` headers; resets in seconds."""

    model_config = ConfigDict(frozen=True)

    limit_requests: int | None = None
    limit_tokens: int | None = None
    remaining_requests: int | None = None
    remaining_tokens: int | None = None
    reset_requests_s: float | None = None
    reset_tokens_s: float | None = None

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> RateLimitInfo | None:
        """None when the response carries no rate-limit header at all."""
        info = cls(
            limit_requests=_int(headers.get("x-ratelimit-limit-requests")),
            limit_tokens=_int(headers.get("x-ratelimit-limit-tokens")),
            remaining_requests=_int(headers.get("x-ratelimit-remaining-requests")),
            remaining_tokens=_int(headers.get("x-ratelimit-remaining-tokens")),
            reset_requests_s=_duration(headers.get("x-ratelimit-reset-requests")),
            reset_tokens_s=_duration(headers.get("x-ratelimit-reset-tokens")),
        )
        return info if info.model_dump(exclude_none=True) else None


class Completion(BaseModel):
    """A successful call: the ``chat.completion`` body (streamed or not) and how it went."""

    body: dict[str, Any]
    usage: Usage
    attempts: list[Attempt]
    latency_ms: int
    rate_limits: RateLimitInfo | None = None

    @property
    def content(self) -> str | None:
        """The first choice's message text."""
        choices = self.body.get("choices") or [{}]
        content = (choices[0].get("message") or {}).get("content")
        return content if isinstance(content, str) else None


class ProviderError(Exception):
    """A call that failed for good (``permanent``) or ran out of attempts or time.

    ``message`` is the provider's own error message when it sent one; ``retry_after_s``
    is the server's last requested delay, so a caller can re-queue the job for then.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None,
        permanent: bool,
        attempts: list[Attempt],
        retry_after_s: float | None = None,
        code: str | None = None,
    ) -> None:
        self.message = message
        self.status = status
        self.permanent = permanent
        self.attempts = attempts
        self.retry_after_s = retry_after_s
        self.code = code
        super().__init__(str(self))

    def __str__(self) -> str:
        status = f"HTTP {self.status}" if self.status is not None else "no response"
        tries = f"{len(self.attempts)} attempt{'s' if len(self.attempts) != 1 else ''}"
        kind = "permanent" if self.permanent else "transient"
        return f"{status}, {kind}, after {tries}: {self.message}"


# --- Header parsing ------------------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|us|µs|ns|h|m|s)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def parse_duration(text: str) -> float | None:
    """A Go-style duration ("6m0s", "1.5s", "250ms") or plain seconds -> seconds."""
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        return value if math.isfinite(value) and value >= 0 else None
    total, pos = 0.0, 0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            return None
        total += float(match.group(1)) * _UNIT_S[match.group(2)]
        pos = match.end()
    return total if text and pos == len(text) else None


def parse_retry_after(headers: Mapping[str, str], now: dt.datetime | None = None) -> float | None:
    """The server's requested delay in seconds: ``retry-after-ms`` first, then ``retry-after``."""
    millis = headers.get("retry-after-ms")
    if millis is not None:
        seconds = _float(millis)
        if seconds is not None:
            return seconds / 1000
    value = headers.get("retry-after")
    if value is None:
        return None
    seconds = _float(value)
    if seconds is not None:
        return seconds
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - (now or dt.datetime.now(dt.UTC))).total_seconds())


def _float(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def _int(text: str | None) -> int | None:
    value = _float(text) if text is not None else None
    return int(value) if value is not None else None


def _duration(text: str | None) -> float | None:
    return parse_duration(text) if text is not None else None


def backoff_s(retries: Retries, retry: int, rng: random.Random) -> float:
    """Full jitter: uniform in [0, min(max_backoff_s, base_s * 2**(retry - 1))]."""
    ceiling = min(retries.max_backoff_s, retries.base_s * 2 ** min(retry - 1, 60))
    return rng.uniform(0, ceiling)


# --- Server-sent events --------------------------------------------------------------


class StreamError(ValueError):
    """A stream that cannot be trusted: corrupt, cut short, or carrying an error event."""


@dataclass(frozen=True)
class SSEEvent:
    data: str
    event: str = "message"
    id: str | None = None


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
        try:
            chunk = json.loads(event.data)
        except ValueError as err:
            raise StreamError(f"corrupt stream chunk: {err}") from None
        if not isinstance(chunk, dict):
            raise StreamError("corrupt stream chunk: not a JSON object")
        if chunk.get("error"):
            raise StreamError(f"error event in stream: {_error_text(chunk)[0]}")
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


# --- The client ----------------------------------------------------------------------

ApiKeyLookup = Callable[[str], str | None]
AttemptHook = Callable[[str, Attempt, RateLimitInfo | None], None]
Sleep = Callable[[float], Awaitable[None]]


class _ResponseError(Exception):
    """An error response; its message and code are the provider's own."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class _TransientError(_ResponseError):
    """A response a retry may fix (429, 408, 409, 5xx)."""


class _PermanentError(_ResponseError):
    """A response no retry can fix (any other 4xx)."""


_ATTEMPT_ERRORS = (
    _ResponseError,
    TimeoutError,
    httpx.TransportError,
    httpx.DecodingError,
    StreamError,
)


def _classify(err: Exception) -> tuple[str, str | None, bool]:
    """(error text, provider error code, permanent?) of a failed attempt."""
    if isinstance(err, _ResponseError):
        return str(err), err.code, isinstance(err, _PermanentError)
    if isinstance(err, TimeoutError):
        return "deadline reached during the attempt", None, False
    permanent = isinstance(err, httpx.UnsupportedProtocol | httpx.LocalProtocolError)
    text = str(err) or str(err.__cause__ or err.__context__ or "")
    return (f"{type(err).__name__}: {text}" if text else type(err).__name__), None, permanent


@dataclass
class _Outcome:
    """What one attempt produced: a body, or an error that is permanent or not."""

    attempt: Attempt
    body: dict[str, Any] | None = None
    usage: Usage = field(default_factory=Usage)
    rate_limits: RateLimitInfo | None = None
    permanent: bool = False
    message: str = ""
    code: str | None = None


def _error_text(payload: Any) -> tuple[str, str | None]:
    """The provider's message and code from an OpenAI-style error body."""
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict):
        code = error.get("code") or error.get("type")
        return str(error.get("message") or error), str(code) if code else None
    if isinstance(error, str):
        return error, None
    return str(payload)[:500], None


def _response_error(status: int, content: bytes) -> tuple[str, str | None]:
    try:
        return _error_text(json.loads(content))
    except ValueError:
        text = content.decode("utf-8", "replace").strip()[:500]
        return text or httpx.codes.get_reason_phrase(status) or f"HTTP {status}", None


def _attempt_timeout(timeouts: Timeouts, remaining_s: float) -> httpx.Timeout:
    remaining_s = max(remaining_s, 0.001)
    return httpx.Timeout(
        connect=min(timeouts.connect_s, remaining_s),
        read=min(timeouts.read_s, remaining_s),
        write=min(timeouts.write_s, remaining_s),
        pool=min(timeouts.pool_s, remaining_s),
    )


def _parse_json_body(content: bytes) -> dict[str, Any]:
    try:
        body = json.loads(content)
    except ValueError as err:
        raise StreamError(f"200 with a body that is not valid JSON: {err}") from None
    if not isinstance(body, dict) or not isinstance(body.get("choices"), list):
        raise StreamError("200 with a body that is not a chat completion")
    return body


def _usage_of(body: dict[str, Any]) -> Usage:
    try:
        return Usage.from_api(body.get("usage"))
    except (AttributeError, TypeError, ValueError) as err:
        raise StreamError(f"200 with a malformed usage block: {err}") from None


async def _read_stream(response: httpx.Response) -> dict[str, Any]:
    parser, stream = SSEParser(), ChatStream()
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


async def _read_success(response: httpx.Response) -> dict[str, Any]:
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        return await _read_stream(response)
    return _parse_json_body(await response.aread())


class ProviderClient:
    """Calls chat models of a ``Config`` with retries, timeouts and a per-call deadline.

    ``api_key`` maps a provider name to its key (None sends no ``Authorization``); it is
    asked on every call, so a rotated secret is picked up. ``on_attempt`` sees every
    attempt with the response's rate-limit headers. ``sleep``, ``rng`` and ``clock`` are
    there for tests. Safe to share by concurrent tasks; ``aclose`` closes the pools of the
    running event loop.
    """

    def __init__(
        self,
        config: Config,
        api_key: ApiKeyLookup,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        on_attempt: AttemptHook | None = None,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._api_key = api_key
        self._transport = transport
        self._on_attempt = on_attempt
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._clock = clock
        self._pools: dict[asyncio.AbstractEventLoop, dict[str, httpx.AsyncClient]] = {}

    def __repr__(self) -> str:
        return f"ProviderClient(providers={sorted(self.config.providers)})"

    async def complete(
        self, model_name: str, body: dict[str, Any], *, deadline_s: float | None = None
    ) -> Completion:
        """POST ``body`` to the chat endpoint of ``model_name`` (a configured name or id).

        ``deadline_s`` is how long the whole call may take from now, attempts and waits
        included (default and ceiling: the provider's ``timeouts.total_s``). Raises
        ``ProviderError``.
        """
        start = self._clock()
        resolved = self.config.resolve_model(model_name)
        if resolved is None:
            raise ProviderError(
                f"unknown model {model_name!r}", status=None, permanent=True, attempts=[]
            )
        name, model = resolved
        provider = self.config.providers[model.provider]
        total_s = provider.timeouts.total_s
        deadline = start + (total_s if deadline_s is None else min(deadline_s, total_s))
        key = self._api_key(model.provider)
        request = _Request(
            provider=provider,
            headers=_headers(key),
            content=json.dumps(_with_usage(body), separators=(",", ":")).encode(),
            secret=key,
        )
        client = self._http(model.provider, provider)
        attempts: list[Attempt] = []
        while True:
            outcome = await self._attempt(client, request, deadline)
            attempts.append(outcome.attempt)
            self._notify(name, outcome)
            if outcome.body is not None:
                return Completion(
                    body=outcome.body,
                    usage=outcome.usage,
                    attempts=attempts,
                    latency_ms=_ms(self._clock() - start),
                    rate_limits=outcome.rate_limits,
                )
            delay = self._delay(len(attempts), outcome)
            stop = self._stop_reason(outcome, len(attempts), delay, deadline)
            if stop:
                raise self._give_up(name, outcome, attempts, stop)
            logger.warning(
                "provider call failed; retrying",
                extra={
                    "model": name,
                    "attempt": len(attempts),
                    "status": outcome.attempt.status,
                    "error": outcome.attempt.error,
                    "retry_in_s": round(delay, 3),
                },
            )
            await self._sleep(delay)

    async def aclose(self) -> None:
        """Close this event loop's connection pools (pools of other loops are dropped)."""
        loop = asyncio.get_running_loop()
        pools = self._pools.pop(loop, {})
        self._pools.clear()
        for client in pools.values():
            await client.aclose()

    # -- one attempt ----------------------------------------------------------------

    async def _attempt(
        self, client: httpx.AsyncClient, request: _Request, deadline: float
    ) -> _Outcome:
        began = self._clock()
        remaining = deadline - began
        status: int | None = None
        rate_limits: RateLimitInfo | None = None
        retry_after: float | None = None
        try:
            async with asyncio.timeout(remaining):
                response = await client.send(request.build(client, remaining), stream=True)
                try:
                    status = response.status_code
                    rate_limits = RateLimitInfo.from_headers(response.headers)
                    retry_after = parse_retry_after(response.headers)
                    body = await self._read(response)
                    usage = _usage_of(body)
                finally:
                    await response.aclose()
        except _ATTEMPT_ERRORS as err:
            error, code, permanent = _classify(err)
        else:
            attempt = Attempt(status=status, latency_ms=_ms(self._clock() - began))
            return _Outcome(attempt=attempt, body=body, usage=usage, rate_limits=rate_limits)
        error = request.redact(error)
        attempt = Attempt(
            status=status,
            error=error,
            latency_ms=_ms(self._clock() - began),
            retry_after_s=None if permanent else retry_after,
        )
        return _Outcome(
            attempt, rate_limits=rate_limits, permanent=permanent, message=error, code=code
        )

    @staticmethod
    async def _read(response: httpx.Response) -> dict[str, Any]:
        status = response.status_code
        if status == 200:
            return await _read_success(response)
        message, code = _response_error(status, await response.aread())
        retryable = status in RETRYABLE_STATUS or status >= 500
        raise (_TransientError if retryable else _PermanentError)(message, code)

    # -- between attempts -----------------------------------------------------------

    def _delay(self, attempt_count: int, outcome: _Outcome) -> float:
        retries = self.config.retries
        server = outcome.attempt.retry_after_s
        if server is not None:
            return min(server, retries.max_retry_after_s)
        return backoff_s(retries, attempt_count, self._rng)

    def _stop_reason(
        self, outcome: _Outcome, attempt_count: int, delay: float, deadline: float
    ) -> str | None:
        if outcome.permanent:
            return "permanent"
        if attempt_count >= self.config.retries.max_attempts:
            return "out of attempts"
        if self._clock() + delay >= deadline:
            return "deadline"
        return None

    def _give_up(
        self, model: str, outcome: _Outcome, attempts: list[Attempt], reason: str
    ) -> ProviderError:
        logger.warning(
            "provider call failed",
            extra={
                "model": model,
                "attempts": len(attempts),
                "status": outcome.attempt.status,
                "error": outcome.attempt.error,
                "reason": reason,
            },
        )
        message = outcome.message if reason == "permanent" else f"{reason}: {outcome.message}"
        return ProviderError(
            message,
            status=outcome.attempt.status,
            permanent=outcome.permanent,
            attempts=attempts,
            retry_after_s=outcome.attempt.retry_after_s,
            code=outcome.code,
        )

    def _notify(self, model: str, outcome: _Outcome) -> None:
        if self._on_attempt is None:
            return
        try:
            self._on_attempt(model, outcome.attempt, outcome.rate_limits)
        except Exception:
            logger.exception("on_attempt hook failed", extra={"model": model})

    # -- connection pools -----------------------------------------------------------

    def _http(self, name: str, provider: Provider) -> httpx.AsyncClient:
        for loop in [loop for loop in self._pools if loop.is_closed()]:
            del self._pools[loop]  # a finished asyncio.run(): its connections died with it
        pools = self._pools.setdefault(asyncio.get_running_loop(), {})
        client = pools.get(name)
        if client is None or client.is_closed:
            client = pools[name] = self._new_pool(provider)
        return client

    def _new_pool(self, provider: Provider) -> httpx.AsyncClient:
        t = provider.timeouts
        return httpx.AsyncClient(
            timeout=httpx.Timeout(
                connect=t.connect_s, read=t.read_s, write=t.write_s, pool=t.pool_s
            ),
            limits=httpx.Limits(
                max_connections=provider.max_connections,
                max_keepalive_connections=provider.max_connections,
                keepalive_expiry=30,
            ),
            transport=self._transport,
            headers={"user-agent": USER_AGENT},
        )


@dataclass(frozen=True)
class _Request:
    """The parts of a call's request that stay the same across attempts."""

    provider: Provider
    headers: dict[str, str]
    content: bytes
    secret: str | None = field(repr=False)

    def build(self, client: httpx.AsyncClient, remaining_s: float) -> httpx.Request:
        return client.build_request(
            "POST",
            self.provider.chat_url,
            content=self.content,
            headers=self.headers,
            timeout=_attempt_timeout(self.provider.timeouts, remaining_s),
        )

    def redact(self, text: str) -> str:
        return text.replace(self.secret, REDACTED) if self.secret else text


def _headers(key: str | None) -> dict[str, str]:
    headers = {"content-type": "application/json"}
    if key:
        headers["authorization"] = f"Bearer {key}"
    return headers


def _with_usage(body: dict[str, Any]) -> dict[str, Any]:
    """A streamed request asks for the final usage chunk unless it says otherwise."""
    if body.get("stream") and "stream_options" not in body:
        return body | {"stream_options": {"include_usage": True}}
    return body


def _ms(seconds: float) -> int:
    return max(0, round(seconds * 1000))
