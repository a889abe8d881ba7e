"""An OpenAI-compatible chat API on loopback that answers deterministically and misbehaves
on purpose.

It is the embedded default's provider (no key, no network) and the adversary of the tests,
demo and benchmarks. Endpoints (``/v1`` is optional):

- ``POST /v1/chat/completions``, streamed or not, validated like the real API: 400 with
  ``{"error": {"message", "type", "param", "code"}}`` for a bad body, 401 for a missing or
  wrong key (when ``api_key`` is set), 404 for an unknown model.
- ``GET /v1/models``, ``GET /health``, ``GET /stats`` (``Stats`` as JSON).
- ``POST /admin/faults`` ``{"faults": ["503", {"kind": "429", "retry_after_s": 2}]}``
  (applied to the next chat requests, in order), ``POST /admin/outage`` ``{"seconds": N}``,
  ``POST /admin/settings`` (any ``SimulatorSettings`` keys), ``POST /admin/reset``.

Answers are derived from the messages (``answer_for``): ``sim:<sha256 of the messages>``,
the first words of the last user message, then filler up to ``answer_tokens``, cut at
``max_tokens``. Tokens are counted by ``count_tokens`` (``\\w+|[^\\w\\s]``), each message
adding 4 and each request 3. A prompt prefix (leading messages) seen before for the model
is cached, reported the OpenAI way (``prompt_tokens_details.cached_tokens``) and the
DeepSeek way (``prompt_cache_hit_tokens`` / ``prompt_cache_miss_tokens``).

Requests and tokens per minute are limited per model over a rolling 60 s window (429 with
``retry-after``, ``retry-after-ms``); every chat response carries ``x-ratelimit-*``.
Faults (seeded probabilities or injected): 500, 503, 429, connection reset, hang past the
client's timeout, truncated body or stream (no ``[DONE]``), corrupt SSE chunk, and a timed
outage (every request 503).

Stats count completions *delivered whole*, per distinct request body (``duplicates`` are
completions beyond the first of the same body: work paid for twice); a faulted response
is not billed.

The server is the standard library's asyncio streams with a small HTTP/1.1 keep-alive
parser: run it in-process with ``Simulator`` (a background thread) or in the foreground
with ``serve`` / ``python -m chatbatch.local.simulator``.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import hashlib
import http
import itertools
import json
import random
import re
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from chatbatch.core.config import ConfigError, load_config

TOKEN_RE = re.compile(r"\w+|[^\w\s]")
MESSAGE_OVERHEAD_TOKENS = 4
REQUEST_OVERHEAD_TOKENS = 3
WINDOW_S = 60.0
MAX_BODY_BYTES = 32 * 1024 * 1024
ECHO_WORDS = 8
FILLER_TEXT = (
    "the answer follows from the question as asked and nothing more is needed to see why "
    "each part fits with the rest of it so we stop here"
)
FILLER = tuple(FILLER_TEXT.split())
ROLES = ("system", "developer", "user", "assistant", "tool")
T = TypeVar("T")


# --- Settings and stats --------------------------------------------------------------


class FaultKind(StrEnum):
    error_500 = "500"
    error_503 = "503"
    rate_limited = "429"
    reset = "reset"
    hang = "hang"
    truncate = "truncate"
    corrupt = "corrupt"


class Fault(BaseModel):
    """A fault for one coming chat request; ``retry_after_*`` become headers of a 429/503."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: FaultKind
    retry_after_s: float | None = Field(default=None, ge=0)
    retry_after_ms: int | None = Field(default=None, ge=0)


Probability = Annotated[float, Field(ge=0, le=1)]


class SimulatorSettings(BaseModel):
    """How the simulator behaves. Every field can change at run time (``configure``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    api_key: str | None = Field(default=None, repr=False, description="None: no auth")
    models: list[str] = Field(default_factory=list, description="accepted model ids")
    config_models: bool = Field(default=True, description="also accept chatbatch.toml's ids")
    rpm: int | None = Field(default=None, gt=0, description="requests per minute per model")
    tpm: int | None = Field(default=None, gt=0, description="tokens per minute per model")
    latency_ms: float = Field(default=0, ge=0, description="before the first byte")
    per_token_ms: float = Field(default=0, ge=0, description="per output token")
    answer_tokens: int = Field(default=24, ge=4, le=100_000)
    seed: int = 0
    fault_rates: dict[FaultKind, Probability] = Field(default_factory=dict)
    hang_s: float = Field(default=30, gt=0, description="a hang lasts this long, then drops")
    outage_at_s: float | None = Field(default=None, ge=0, description="after start")
    outage_s: float = Field(default=0, ge=0)
    keepalive: bool = Field(default=True, description="': keep-alive' opens each stream")
    stream_chunk_tokens: int = Field(default=1, ge=1)
    write_bytes: int | None = Field(default=None, ge=1, description="split stream writes")
    null_usage_choices: bool = Field(default=False, description="usage chunk: choices null")

    @model_validator(mode="after")
    def _rates(self) -> SimulatorSettings:
        total = sum(self.fault_rates.values())
        if total > 1:
            raise ValueError(f"fault_rates add up to {total:g}; at most 1 is allowed")
        return self


class Stats(BaseModel):
    uptime_s: float
    connections: int = Field(description="TCP connections accepted")
    requests: int = Field(description="chat completion requests received")
    by_status: dict[str, int] = Field(description="status code, or 'reset' / 'hang'")
    faults: dict[str, int]
    completions: int = Field(description="completions delivered whole (billed)")
    distinct_requests: int
    duplicates: int = Field(description="completions beyond the first per distinct request")
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    max_requests_60s: int = Field(description="most chat requests received in any 60 s")
    max_tokens_60s: int = Field(description="most tokens billed in any 60 s")


# --- Answers and tokens --------------------------------------------------------------


def count_tokens(text: str) -> int:
    return len(TOKEN_RE.findall(text))


def _content(message: dict[str, Any]) -> str:
    content = message.get("content")
    return content if isinstance(content, str) else ""


def message_tokens(message: dict[str, Any]) -> int:
    return MESSAGE_OVERHEAD_TOKENS + count_tokens(_content(message))


def answer_for(
    messages: Sequence[dict[str, Any]], max_tokens: int | None = None, answer_tokens: int = 24
) -> tuple[str, int, str]:
    """(content, completion tokens, finish reason) the simulator answers to ``messages``."""
    canonical = json.dumps(list(messages), sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:12]
    last_user = next((_content(m) for m in reversed(messages) if m.get("role") == "user"), "")
    text = f"sim:{digest} " + " ".join(last_user.split()[:ECHO_WORDS])
    words = [text.rstrip()]
    tokens = count_tokens(words[0])
    start = int(digest, 16)
    while tokens < answer_tokens:
        words.append(FILLER[(start + tokens) % len(FILLER)])
        tokens += 1
    content = " ".join(words)
    if max_tokens is not None and tokens > max_tokens:
        cut = list(TOKEN_RE.finditer(content))[max_tokens - 1].end()
        return content[:cut], max_tokens, "length"
    return content, tokens, "stop"


def _pieces(content: str, tokens_per_piece: int) -> list[str]:
    """``content`` split after every ``tokens_per_piece`` tokens; the pieces join back."""
    ends = [m.end() for m in TOKEN_RE.finditer(content)][tokens_per_piece - 1 :: tokens_per_piece]
    bounds = [0, *ends[:-1], len(content)] if ends else [0, len(content)]
    return [content[a:b] for a, b in itertools.pairwise(bounds) if b > a]


def _usage(prompt: int, cached: int, completion: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
        "prompt_cache_hit_tokens": cached,
        "prompt_cache_miss_tokens": prompt - cached,
    }


def _prefix_digests(messages: Sequence[dict[str, Any]]) -> list[bytes]:
    running, digests = hashlib.sha256(), []
    for message in messages:
        running.update(json.dumps(message, sort_keys=True).encode())
        digests.append(running.copy().digest()[:16])
    return digests


def format_duration(seconds: float) -> str:
    """Seconds -> the providers' header form: "250ms", "1.5s", "6m0s"."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    minutes, rest = divmod(seconds, 60)
    text = f"{rest:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{int(minutes)}m{text}" if minutes else text


def request_key(body: dict[str, Any]) -> str:
    """Identifies a request whatever its streaming mode: a retry of a job has the same key."""
    stripped = {k: v for k, v in body.items() if k not in {"stream", "stream_options"}}
    return hashlib.sha256(json.dumps(stripped, sort_keys=True).encode()).hexdigest()[:32]


# --- Request validation (the real API's rules and messages) ---------------------------


class ApiError(Exception):
    """An error response in OpenAI's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type = status, message, type
        self.param, self.code, self.headers = param, code, headers or {}

    def body(self) -> dict[str, Any]:
        error = {"message": self.message, "type": self.type, "param": self.param}
        return {"error": error | {"code": self.code}}


def _invalid(message: str, param: str | None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def _json_type(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a decimal", str: "a string"}
    names |= {dict: "an object", list: "an array", type(None): "null"}
    return names.get(type(value), type(value).__name__)


# name -> (minimum, maximum, integer?)
_RANGES: dict[str, tuple[float | None, float | None, bool]] = {
    "temperature": (0, 2, False),
    "top_p": (0, 1, False),
    "presence_penalty": (-2, 2, False),
    "frequency_penalty": (-2, 2, False),
    "max_tokens": (1, None, True),
    "max_completion_tokens": (1, None, True),
    "n": (1, 128, True),
}


def _check_number(
    name: str, value: Any, low: float | None, high: float | None, integer: bool
) -> None:
    kind = "integer" if integer else "decimal"
    if isinstance(value, bool) or not isinstance(value, int if integer else int | float):
        raise _invalid(
            f"Invalid type for '{name}': expected {'an integer' if integer else 'a decimal'}, "
            f"but got {_json_type(value)} instead.",
            name,
            "invalid_type",
        )
    if low is not None and value < low:
        raise _invalid(
            f"Invalid '{name}': {kind} below minimum value. Expected a value >= {low:g}, "
            f"but got {value} instead.",
            name,
            f"{kind}_below_min_value",
        )
    if high is not None and value > high:
        raise _invalid(
            f"Invalid '{name}': {kind} above maximum value. Expected a value <= {high:g}, "
            f"but got {value} instead.",
            name,
            f"{kind}_above_max_value",
        )


def _check_message(index: int, message: Any) -> None:
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        raise _invalid(
            f"Invalid type for '{where}': expected an object, but got {_json_type(message)} "
            "instead.",
            where,
            "invalid_type",
        )
    role = message.get("role")
    if role not in ROLES:
        allowed = ", ".join(f"'{r}'" for r in ROLES)
        raise _invalid(
            f"Invalid value: {json.dumps(role)}. Supported values are: {allowed}.",
            f"{where}.role",
            "invalid_value",
        )
    content = message.get("content")
    if not isinstance(content, str) and not (role == "assistant" and content is None):
        raise _invalid(
            f"Invalid type for '{where}.content': expected a string, but got "
            f"{_json_type(content)} instead.",
            f"{where}.content",
            "invalid_type",
        )


def validate_request(body: Any) -> None:
    """Raise ``ApiError`` (400) for a body the real API would refuse."""
    if not isinstance(body, dict):
        raise _invalid("We could not parse the JSON body of your request.", None)
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise _invalid("you must provide a model parameter", "model")
    messages = body.get("messages")
    if messages is None:
        raise _invalid(
            "Missing required parameter: 'messages'.", "messages", "missing_required_parameter"
        )
    if not isinstance(messages, list) or not messages:
        raise _invalid(
            "Invalid 'messages': expected a non-empty array of messages.",
            "messages",
            "empty_array" if isinstance(messages, list) else "invalid_type",
        )
    for index, message in enumerate(messages):
        _check_message(index, message)
    for name, (low, high, integer) in _RANGES.items():
        if body.get(name) is not None:
            _check_number(name, body[name], low, high, integer)
    if "stream" in body and not isinstance(body["stream"], bool | None):
        raise _invalid("Invalid type for 'stream': expected a boolean.", "stream", "invalid_type")
    if body.get("stream_options") is not None and not body.get("stream"):
        raise _invalid(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            "stream_options",
            "invalid_value",
        )


# --- The engine: requests in, replies out (no I/O) ------------------------------------


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


def _json_reply(status: int, payload: Any, headers: dict[str, str] | None = None) -> Reply:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return Reply(status, {"content-type": "application/json", **(headers or {})}, body)


class _Window:
    """Amounts seen in the last ``span_s`` seconds, with their running total."""

    def __init__(self, span_s: float = WINDOW_S) -> None:
        self.span_s = span_s
        self.total = 0
        self._events: deque[tuple[float, int]] = deque()

    def prune(self, now: float) -> None:
        while self._events and self._events[0][0] <= now - self.span_s:
            self.total -= self._events.popleft()[1]

    def add(self, now: float, amount: int = 1) -> None:
        self.prune(now)
        self._events.append((now, amount))
        self.total += amount

    def wait_s(self, now: float, room: int) -> float:
        """Seconds until the total is at most ``room`` (0 if it already is)."""
        self.prune(now)
        excess = self.total - room
        if excess <= 0:
            return 0.0
        if room < 0:
            return self.span_s
        for when, amount in self._events:
            excess -= amount
            if excess <= 0:
                return when + self.span_s - now
        return self.span_s

    def reset_s(self, now: float) -> float:
        self.prune(now)
        return self._events[0][0] + self.span_s - now if self._events else 0.0


@dataclass
class _Limits:
    requests: _Window = field(default_factory=_Window)
    tokens: _Window = field(default_factory=_Window)


@dataclass
class _Counters:
    connections: int = 0
    requests: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    faults: dict[str, int] = field(default_factory=dict)
    completions: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    max_requests_60s: int = 0
    max_tokens_60s: int = 0
    received: _Window = field(default_factory=_Window)
    billed: _Window = field(default_factory=_Window)


@dataclass(frozen=True)
class _Answer:
    id: str
    created: int
    model: str
    content: str
    finish_reason: str
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
        message = {"role": "assistant", "content": self.content}
        choice = {"index": 0, "message": message, "logprobs": None}
        choice["finish_reason"] = self.finish_reason
        return self.head("chat.completion") | {"choices": [choice], "usage": self.usage}

    def chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
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


class Engine:
    """The simulator's state and logic, driven by one event loop (not thread-safe)."""

    def __init__(
        self, settings: SimulatorSettings, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._clock = clock
        self._started = clock()
        self._script: deque[Fault] = deque()
        self._outage: tuple[float, float] | None = None
        self._serial = 0
        self.apply(settings)
        self.reset()

    # -- admin ------------------------------------------------------------------------

    def apply(self, settings: SimulatorSettings) -> None:
        self.settings = settings
        self._rng = random.Random(settings.seed)
        self._models = _known_models(settings)

    def configure(self, changes: dict[str, Any]) -> SimulatorSettings:
        data = self.settings.model_dump() | changes
        self.apply(SimulatorSettings.model_validate(data))
        return self.settings

    def reset(self) -> None:
        """Forget stats, rate-limit windows, cached prefixes, injected faults and outages."""
        self._outage = None
        self._counters = _Counters()
        self._limits: dict[str, _Limits] = {}
        self._seen: dict[str, set[bytes]] = {}
        self._script.clear()

    def inject(self, faults: Sequence[Fault]) -> None:
        self._script.extend(faults)

    def start_outage(self, seconds: float) -> None:
        now = self._clock()
        self._outage = (now, now + seconds)

    def stats(self) -> Stats:
        c = self._counters
        return Stats(
            uptime_s=round(self._clock() - self._started, 3),
            connections=c.connections,
            requests=c.requests,
            by_status=dict(c.by_status),
            faults=dict(c.faults),
            completions=sum(c.completions.values()),
            distinct_requests=len(c.completions),
            duplicates=c.duplicates,
            prompt_tokens=c.prompt_tokens,
            cached_tokens=c.cached_tokens,
            completion_tokens=c.completion_tokens,
            max_requests_60s=c.max_requests_60s,
            max_tokens_60s=c.max_tokens_60s,
        )

    # -- HTTP entry point -------------------------------------------------------------

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Reply:
        route = path.split("?", 1)[0].rstrip("/").removeprefix("/v1") or "/"
        chat = route == "/chat/completions"
        try:
            reply = self._route(method, route, headers, body)
        except ApiError as err:
            reply = _json_reply(err.status, err.body(), err.headers)
        if chat:
            self._count_status("reset" if reply.reset else "hang" if reply.drop else reply.status)
        return reply

    def _route(self, method: str, route: str, headers: dict[str, str], body: bytes) -> Reply:
        if route == "/chat/completions" and method == "POST":
            return self._chat(headers, body)
        if route == "/models" and method == "GET":
            return _json_reply(200, self._model_list())
        if route == "/health" and method == "GET":
            return _json_reply(200, {"status": "ok"})
        if route == "/stats" and method == "GET":
            return _json_reply(200, self.stats().model_dump())
        if route.startswith("/admin/") and method == "POST":
            self._authorize(headers)
            return _json_reply(200, self._admin(route.removeprefix("/admin/"), _load(body)))
        raise ApiError(404, f"Unknown request URL: {method} {route}.", code="unknown_url")

    def _admin(self, action: str, payload: Any) -> dict[str, Any]:
        payload = payload if isinstance(payload, dict) else {}
        try:
            if action == "faults":
                faults = [_as_fault(f) for f in payload.get("faults") or []]
                self.inject(faults)
                return {"queued": len(self._script)}
            if action == "outage":
                self.start_outage(float(payload.get("seconds", 0)))
                return {"outage_s": float(payload.get("seconds", 0))}
            if action == "settings":
                return self.configure(payload).model_dump(mode="json", exclude={"api_key"})
            if action == "reset":
                self.reset()
                return {"reset": True}
        except (ValidationError, ValueError, TypeError) as err:
            raise _invalid(str(err), None) from None
        raise ApiError(404, f"Unknown admin action: {action}.", code="unknown_url")

    def _model_list(self) -> dict[str, Any]:
        data = [
            {"id": m, "object": "model", "created": 0, "owned_by": "chatbatch-simulator"}
            for m in sorted(self._models)
        ]
        return {"object": "list", "data": data}

    # -- chat completions -------------------------------------------------------------

    def _chat(self, headers: dict[str, str], raw: bytes) -> Reply:
        now = self._clock()
        self._count_request(now)
        self._authorize(headers)
        body = _load(raw)
        validate_request(body)
        model = body["model"]
        if self._models and model not in self._models:
            raise ApiError(
                404,
                f"The model `{model}` does not exist or you do not have access to it.",
                code="model_not_found",
            )
        try:
            reply = self._complete(body, model, now)
        except ApiError as err:
            err.headers = self._limit_headers(model, now) | err.headers
            raise
        reply.headers |= self._limit_headers(model, now)
        return reply

    def _complete(self, body: dict[str, Any], model: str, now: float) -> Reply:
        if self._in_outage(now):
            self._count_fault("outage")
            raise ApiError(503, "Service unavailable (simulated outage).", type="server_error")
        messages = body["messages"]
        prompt, cached = self._prompt_usage(model, messages)
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        content, completion, finish = answer_for(messages, max_tokens, self.settings.answer_tokens)
        self._admit(model, now, prompt + completion)
        self._seen.setdefault(model, set()).update(_prefix_digests(messages))
        fault = self._next_fault()
        if fault is not None and fault.kind not in {FaultKind.truncate, FaultKind.corrupt}:
            return self._fault_reply(fault)
        self._serial += 1
        key = request_key(body)
        answer = _Answer(
            id=f"chatcmpl-{key[:20]}{self._serial:08x}",
            created=int(time.time()),
            model=model,
            content=content,
            finish_reason=finish,
            usage=_usage(prompt, cached, completion),
        )
        damage = fault.kind if fault else None
        stream_options = body.get("stream_options") or {}
        if body.get("stream"):
            reply = self._stream(answer, bool(stream_options.get("include_usage")), damage)
        else:
            reply = self._plain(answer, damage)
        if damage is None:
            reply.on_delivered = lambda: self._bill(key, prompt, cached, completion)
        return reply

    def _plain(self, answer: _Answer, damage: FaultKind | None) -> Reply:
        reply = _json_reply(200, answer.body())
        if damage is not None:
            reply.body = reply.body[: len(reply.body) // 2]
        tokens = answer.usage["completion_tokens"]
        reply.delay_s = (self.settings.latency_ms + self.settings.per_token_ms * tokens) / 1000
        return reply

    def _stream(self, answer: _Answer, include_usage: bool, damage: FaultKind | None) -> Reply:
        s = self.settings
        pieces = _pieces(answer.content, s.stream_chunk_tokens)
        per_token_s = s.per_token_ms / 1000
        content = [(per_token_s * count_tokens(p), answer.chunk({"content": p})) for p in pieces]
        events = [(0.0, KEEPALIVE_FRAME)] if s.keepalive else []
        events.append((0.0, answer.chunk({"role": "assistant", "content": ""})))
        half = len(content) // 2
        if damage is FaultKind.truncate:
            events += content[:half]
        else:
            if damage is FaultKind.corrupt:
                frame = content[half][1]
                content.insert(half, (0.0, frame[: len(frame) // 2] + b"\n\n"))
            events += content
            events.append((0.0, answer.chunk({}, answer.finish_reason)))
            if include_usage:
                events.append((0.0, answer.usage_chunk(s.null_usage_choices)))
            events.append((0.0, DONE_FRAME))
        headers = {"content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache"}
        return Reply(200, headers, events=events, delay_s=s.latency_ms / 1000)

    def _prompt_usage(self, model: str, messages: list[dict[str, Any]]) -> tuple[int, int]:
        """(prompt tokens, cached tokens): the longest leading run of messages seen before."""
        sizes = [message_tokens(m) for m in messages]
        seen = self._seen.get(model, set())
        hits = [i for i, d in enumerate(_prefix_digests(messages)) if d in seen]
        cached = REQUEST_OVERHEAD_TOKENS + sum(sizes[: hits[-1] + 1]) if hits else 0
        return REQUEST_OVERHEAD_TOKENS + sum(sizes), cached

    # -- limits, faults, auth ---------------------------------------------------------

    def _admit(self, model: str, now: float, tokens: int) -> None:
        s, limits = self.settings, self._limits.setdefault(model, _Limits())
        checks = [("requests", "RPM", s.rpm, limits.requests, 1)]
        checks.append(("tokens", "TPM", s.tpm, limits.tokens, tokens))
        for kind, unit, limit, window, amount in checks:
            wait = window.wait_s(now, limit - amount) if limit else 0.0
            if wait > 0:
                raise ApiError(
                    429,
                    f"Rate limit reached for {model} on {kind} per min ({unit}): "
                    f"Limit {limit}, Used {window.total}, Requested {amount}. "
                    f"Please try again in {format_duration(wait)}.",
                    type=kind,
                    code="rate_limit_exceeded",
                    headers=_retry_after(wait),
                )
        limits.requests.add(now, 1)
        limits.tokens.add(now, tokens)

    def _limit_headers(self, model: str, now: float) -> dict[str, str]:
        s, limits = self.settings, self._limits.setdefault(model, _Limits())
        headers = {}
        for kind, limit, window in (
            ("requests", s.rpm, limits.requests),
            ("tokens", s.tpm, limits.tokens),
        ):
            if limit:
                window.prune(now)
                headers[f"x-ratelimit-limit-{kind}"] = str(limit)
                headers[f"x-ratelimit-remaining-{kind}"] = str(max(0, limit - window.total))
                headers[f"x-ratelimit-reset-{kind}"] = format_duration(window.reset_s(now))
        return headers

    def _in_outage(self, now: float) -> bool:
        s = self.settings
        scheduled = s.outage_at_s is not None and (
            0 <= now - self._started - s.outage_at_s < s.outage_s
        )
        return scheduled or (self._outage is not None and self._outage[0] <= now < self._outage[1])

    def _next_fault(self) -> Fault | None:
        fault = self._script.popleft() if self._script else self._random_fault()
        if fault is not None:
            self._count_fault(fault.kind.value)
        return fault

    def _random_fault(self) -> Fault | None:
        if not self.settings.fault_rates:
            return None
        draw = self._rng.random()
        for kind, rate in self.settings.fault_rates.items():
            if draw < rate:
                return Fault(kind=kind)
            draw -= rate
        return None

    def _fault_reply(self, fault: Fault) -> Reply:
        if fault.kind is FaultKind.reset:
            return Reply(0, drop=True, reset=True)
        if fault.kind is FaultKind.hang:
            return Reply(0, drop=True, delay_s=self.settings.hang_s)
        headers = {}
        if fault.retry_after_s is not None:
            headers["retry-after"] = f"{fault.retry_after_s:g}"
        if fault.retry_after_ms is not None:
            headers["retry-after-ms"] = str(fault.retry_after_ms)
        status, message, kind = {
            FaultKind.rate_limited: (429, "Rate limit reached (injected).", "requests"),
            FaultKind.error_500: (500, "The server had an error processing your request.", ""),
            FaultKind.error_503: (503, "The engine is currently overloaded.", ""),
        }[fault.kind]
        raise ApiError(status, message, type=kind or "server_error", headers=headers)

    def _authorize(self, headers: dict[str, str]) -> None:
        key = self.settings.api_key
        if key is None:
            return
        given = headers.get("authorization", "")
        if not given:
            raise ApiError(
                401, "You didn't provide an API key in an Authorization header (Bearer KEY)."
            )
        if given != f"Bearer {key}":
            raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key")

    # -- bookkeeping ------------------------------------------------------------------

    def count_connection(self) -> None:
        self._counters.connections += 1

    def _count_request(self, now: float) -> None:
        c = self._counters
        c.requests += 1
        c.received.add(now)
        c.max_requests_60s = max(c.max_requests_60s, c.received.total)

    def _count_status(self, status: int | str) -> None:
        by_status = self._counters.by_status
        by_status[str(status)] = by_status.get(str(status), 0) + 1

    def _count_fault(self, kind: str) -> None:
        self._counters.faults[kind] = self._counters.faults.get(kind, 0) + 1

    def _bill(self, key: str, prompt: int, cached: int, completion: int) -> None:
        c = self._counters
        seen = c.completions.get(key, 0)
        c.completions[key] = seen + 1
        c.duplicates += 1 if seen else 0
        c.prompt_tokens += prompt
        c.cached_tokens += cached
        c.completion_tokens += completion
        c.billed.add(self._clock(), prompt + completion)
        c.max_tokens_60s = max(c.max_tokens_60s, c.billed.total)


def _retry_after(wait_s: float) -> dict[str, str]:
    return {
        "retry-after": str(max(1, round(wait_s + 0.5))),
        "retry-after-ms": str(round(wait_s * 1000)),
    }


def _as_fault(value: Any) -> Fault:
    return Fault(kind=FaultKind(value)) if isinstance(value, str) else Fault.model_validate(value)


def _load(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        raise _invalid(
            "We could not parse the JSON body of your request. The API expects a JSON payload.",
            None,
        ) from None


def _known_models(settings: SimulatorSettings) -> frozenset[str]:
    """Accepted model ids; empty means any."""
    ids = set(settings.models)
    if settings.config_models:
        with contextlib.suppress(ConfigError):
            ids |= {m.model_id for m in load_config().models.values()}
    return frozenset(ids)


# --- HTTP/1.1 over asyncio streams ----------------------------------------------------


class _BadRequestError(Exception):
    def __init__(self, status: int = 400) -> None:
        super().__init__(status)
        self.status = status


@dataclass(frozen=True)
class _Request:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool


async def _read_request(reader: asyncio.StreamReader) -> _Request | None:
    """The next request on the connection, None at a clean end of the connection."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as err:
        if err.partial.strip():
            raise _BadRequestError from None
        return None
    except asyncio.LimitOverrunError:
        raise _BadRequestError(431) from None
    request_line, *lines = head[:-4].decode("latin-1").split("\r\n")
    parts = request_line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise _BadRequestError
    headers = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if not sep:
            raise _BadRequestError
        headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        raise _BadRequestError(411)
    try:
        length = int(headers.get("content-length") or 0)
    except ValueError:
        raise _BadRequestError from None
    if not 0 <= length <= MAX_BODY_BYTES:
        raise _BadRequestError(413)
    body = await reader.readexactly(length) if length else b""
    connection = headers.get("connection", "").lower()
    keep = connection != "close" if parts[2] == "HTTP/1.1" else connection == "keep-alive"
    return _Request(parts[0], parts[1], headers, body, keep)


def _head(status: int, headers: dict[str, str], length: int | None, keep_alive: bool) -> bytes:
    lines = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    lines.append(
        f"content-length: {length}" if length is not None else "transfer-encoding: chunked"
    )
    if not keep_alive:
        lines.append("connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _abort(writer: asyncio.StreamWriter, *, reset: bool) -> None:
    sock = writer.get_extra_info("socket")
    if reset and sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class SimulatorServer:
    """The engine behind an asyncio HTTP/1.1 server; runs on the caller's event loop."""

    def __init__(self, settings: SimulatorSettings) -> None:
        self.engine = Engine(settings)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self._server = await asyncio.start_server(self._serve, host, port, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        self.engine.count_connection()
        try:
            while await self._exchange(reader, writer):
                pass
        except _BadRequestError as err:
            with contextlib.suppress(ConnectionError):
                writer.write(_head(err.status, {}, 0, keep_alive=False))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass  # shutting down: end the connection quietly
        finally:
            self._connections.discard(task)
            writer.close()

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        request = await _read_request(reader)
        if request is None:
            return False
        reply = self.engine.handle(request.method, request.target, request.headers, request.body)
        if reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        if reply.drop:
            _abort(writer, reset=reply.reset)
            return False
        if reply.events is None:
            writer.write(_head(reply.status, reply.headers, len(reply.body), request.keep_alive))
            writer.write(reply.body)
        else:
            writer.write(_head(reply.status, reply.headers, None, request.keep_alive))
            await self._write_events(writer, reply.events)
            writer.write(b"0\r\n\r\n")
        await writer.drain()
        if reply.on_delivered is not None:
            reply.on_delivered()
        return request.keep_alive

    async def _write_events(
        self, writer: asyncio.StreamWriter, events: list[tuple[float, bytes]]
    ) -> None:
        split = self.engine.settings.write_bytes
        for delay, frame in events:
            if delay:
                await writer.drain()
                await asyncio.sleep(delay)
            if split is None:
                writer.write(_chunk(frame))
                continue
            for start in range(0, len(frame), split):
                writer.write(_chunk(frame[start : start + split]))
                await writer.drain()
                await asyncio.sleep(0)


# --- Running it ------------------------------------------------------------------------


class Simulator:
    """The simulator on a background thread with its own event loop.

    ``with Simulator(SimulatorSettings(rpm=60)) as sim: ... sim.base_url ...``; port 0
    takes a free port. The methods are safe to call from any thread.
    """

    def __init__(
        self, settings: SimulatorSettings | None = None, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.host = host
        self.port = port
        self._server = SimulatorServer(settings or SimulatorSettings())
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI-style base URL, ending in /v1."""
        return f"{self.url}/v1"

    def start(self) -> Simulator:
        self._thread = threading.Thread(target=self._run, name="chatbatch-simulator", daemon=True)
        self._thread.start()
        self._ready.wait(timeout=10)
        if self._error is not None or self._loop is None:
            raise RuntimeError(f"simulator did not start: {self._error}")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(timeout=10)
        self._loop = None

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stats(self) -> Stats:
        return self._call(self._server.engine.stats)

    def inject(self, *faults: Fault | FaultKind | str) -> None:
        """Faults for the next chat requests, in order (before any random ones)."""
        parsed = [f if isinstance(f, Fault) else Fault(kind=FaultKind(f)) for f in faults]
        self._call(lambda: self._server.engine.inject(parsed))

    def outage(self, seconds: float) -> None:
        """Every chat request gets a 503 for the next ``seconds``."""
        self._call(lambda: self._server.engine.start_outage(seconds))

    def configure(self, **changes: Any) -> SimulatorSettings:
        return self._call(lambda: self._server.engine.configure(changes))

    def reset(self) -> None:
        self._call(self._server.engine.reset)

    @property
    def settings(self) -> SimulatorSettings:
        return self._server.engine.settings

    def _call(self, fn: Callable[[], T]) -> T:
        if self._loop is None:
            raise RuntimeError("the simulator is not running")
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(fn())
            except BaseException as err:
                future.set_exception(err)

        self._loop.call_soon_threadsafe(run)
        return future.result(timeout=10)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as err:
            self._error = err
            self._ready.set()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        self.port = await self._server.start(self.host, self.port)
        self._loop = asyncio.get_running_loop()
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await self._server.stop()


def serve(
    settings: SimulatorSettings | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    announce: Callable[[str], None] | None = None,
) -> None:
    """Run the simulator in the foreground until interrupted.

    ``announce`` receives the base URL once listening (default: print it).
    """

    async def main() -> None:
        server = SimulatorServer(settings or SimulatorSettings())
        bound = await server.start(host, port)
        (announce or _print_url)(f"http://{host}:{bound}/v1")
        try:
            await asyncio.Event().wait()
        finally:
            await server.stop()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())


def _print_url(url: str) -> None:
    print(f"chatbatch simulator listening on {url}", flush=True)


def _fault_rate(text: str) -> tuple[FaultKind, float]:
    kind, _, rate = text.partition("=")
    try:
        return FaultKind(kind), float(rate)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected KIND=PROBABILITY, KIND one of {[k.value for k in FaultKind]}"
        ) from None


def parse_args(argv: Sequence[str] | None = None) -> tuple[SimulatorSettings, str, int]:
    parser = argparse.ArgumentParser(
        prog="python -m chatbatch.local.simulator",
        description="An OpenAI-compatible chat API on loopback (the chatbatch simulator).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument("--api-key", help="require this key (default: no auth)")
    parser.add_argument("--model", action="append", default=[], help="accept this model id")
    parser.add_argument("--rpm", type=int, help="requests per minute per model")
    parser.add_argument("--tpm", type=int, help="tokens per minute per model")
    parser.add_argument("--latency-ms", type=float, default=0)
    parser.add_argument("--per-token-ms", type=float, default=0)
    parser.add_argument("--answer-tokens", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--fault", type=_fault_rate, action="append", default=[], help="e.g. 503=0.05"
    )
    parser.add_argument("--hang-s", type=float, default=30)
    parser.add_argument("--outage-at-s", type=float, help="start an outage this long after start")
    parser.add_argument("--outage-s", type=float, default=0)
    args = parser.parse_args(argv)
    try:
        settings = SimulatorSettings(
            api_key=args.api_key,
            models=args.model,
            rpm=args.rpm,
            tpm=args.tpm,
            latency_ms=args.latency_ms,
            per_token_ms=args.per_token_ms,
            answer_tokens=args.answer_tokens,
            seed=args.seed,
            fault_rates=dict(args.fault),
            hang_s=args.hang_s,
            outage_at_s=args.outage_at_s,
            outage_s=args.outage_s,
        )
    except ValidationError as err:
        parser.error(str(err))
    return settings, args.host, args.port


def main(argv: Sequence[str] | None = None) -> None:
    settings, host, port = parse_args(argv)
    serve(settings, host, port)


if __name__ == "__main__":
    main()
