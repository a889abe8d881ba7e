"""Retry timing and classification: which failures a retry may fix, and how long to wait.

- ``failed_response`` and ``classify`` decide which failed attempts are permanent (the
  statuses and errors retried are listed in ``chatbatch.provider.client``'s docstring);
  an account-level error (``account_reason``: 401, 402, 403, no such model, a 429 whose
  code says the quota is gone) is an ``AccountError``: permanent, never retried.
- ``retry_delay_s`` is the wait before the next attempt: the server's own delay
  (``parse_retry_after``) capped by ``[retries]``, else ``backoff_s``; ``stop_reason``
  says when to give up.
- ``RateLimitInfo`` is what a response's ``x-ratelimit-*`` headers say; it shares the
  header value parsing (Go-style durations, plain seconds) with ``Retry-After``.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import math
import random
import re
from collections.abc import Mapping

import httpx
from pydantic import BaseModel, ConfigDict

from chatbatch.core.config import Retries
from chatbatch.provider.errors import (
    AccountError,
    PermanentError,
    ResponseError,
    TransientError,
    account_reason,
    http_answer,
    response_error,
)
from chatbatch.provider.sse import StreamError

RETRYABLE_STATUS = frozenset({408, 409, 429})


# --- Which failures a retry may fix ---------------------------------------------------


# every error one attempt may end with; ``classify`` tells them apart
ATTEMPT_ERRORS = (
    ResponseError,
    TimeoutError,
    httpx.TransportError,
    httpx.DecodingError,
    StreamError,
)


# Fixed texts of transport errors (first match along the class's MRO). Their own text is
# never used: an illegal header value is echoed in it, and that header is the API key.
TRANSPORT_TEXTS: dict[type[Exception], str] = {
    httpx.ConnectTimeout: "timed out connecting",
    httpx.ReadTimeout: "timed out waiting for the response",
    httpx.WriteTimeout: "timed out sending the request",
    httpx.PoolTimeout: "timed out waiting for a free connection",
    httpx.ConnectError: "could not connect",
    httpx.ReadError: "the connection broke while reading the response",
    httpx.WriteError: "the connection broke while sending the request",
    httpx.LocalProtocolError: "the request could not be sent (an illegal header or body)",
    httpx.RemoteProtocolError: "the server broke the HTTP protocol",
    httpx.UnsupportedProtocol: "the URL's scheme is not http or https",
    httpx.ProxyError: "the proxy refused the request",
    httpx.DecodingError: "the response body could not be decoded",
    httpx.TransportError: "transport error",
}


def classify(err: Exception) -> tuple[str, str | None, bool]:
    """(error text, provider error code, permanent?) of a failed attempt."""
    if isinstance(err, ResponseError):
        return str(err), err.code, isinstance(err, PermanentError)
    if isinstance(err, TimeoutError):
        return "deadline reached during the attempt", None, False
    if isinstance(err, StreamError):  # our words and the provider's (the client redacts)
        return f"{type(err).__name__}: {err}", None, False
    permanent = isinstance(err, httpx.UnsupportedProtocol | httpx.LocalProtocolError)
    return transport_text(err), None, permanent


def transport_text(err: Exception) -> str:
    """``Class: fixed text (RootCauseClass)``: only class names and our own words."""
    name = type(err).__name__
    text = next((TRANSPORT_TEXTS[c] for c in type(err).__mro__ if c in TRANSPORT_TEXTS), None)
    root: BaseException = err
    while (cause := root.__cause__ or root.__context__) is not None and cause is not err:
        root = cause
    why = f" ({type(root).__name__})" if type(root).__name__ != name else ""
    return f"{name}: {text}{why}" if text else name + why


def failed_response(
    status: int, content: bytes, headers: Mapping[str, str] | None = None
) -> ResponseError:
    """The error an error response raises (carrying the response as its ``answer``): an
    account error, else transient if a retry may fix its status."""
    message, code, codes = response_error(status, content)
    answer = http_answer(status, headers or {}, content)
    if (reason := account_reason(status, message, codes)) is not None:
        return AccountError(message, code, reason, answer)
    retryable = status in RETRYABLE_STATUS or status >= 500
    return (TransientError if retryable else PermanentError)(message, code, answer)


# --- How long to wait, and when to stop -----------------------------------------------


def backoff_s(retries: Retries, retry: int, rng: random.Random) -> float:
    """Full jitter: uniform in [0, min(max_backoff_s, base_s * 2**(retry - 1))]."""
    ceiling = min(retries.max_backoff_s, retries.base_s * 2 ** min(retry - 1, 60))
    return rng.uniform(0, ceiling)


def retry_delay_s(
    retries: Retries, attempt_count: int, server_s: float | None, rng: random.Random
) -> float:
    """The server's requested delay (capped by ``max_retry_after_s``), else backoff."""
    if server_s is not None:
        return min(server_s, retries.max_retry_after_s)
    return backoff_s(retries, attempt_count, rng)


# A retry is not started with less than this left before the call's deadline: it would most
# likely be cut after it was sent, a request the provider may bill with no answer read.
MIN_ATTEMPT_S = 0.25


def stop_reason(
    retries: Retries,
    *,
    permanent: bool,
    attempt_count: int,
    retry_at: float,
    deadline: float,
    maybe_billed: bool = False,
) -> str | None:
    """Why no further attempt is made (None: retry at ``retry_at``, a clock reading).

    An attempt the provider may have billed ends the call: the caller books it before it
    pays for another (``chatbatch.provider.attempt``, **Maybe billed**)."""
    if permanent:
        return "permanent"
    if maybe_billed:
        return "answer not read"
    if attempt_count >= retries.max_attempts:
        return "out of attempts"
    if retry_at >= deadline - MIN_ATTEMPT_S:
        return "deadline"
    return None


# --- What the headers say -------------------------------------------------------------


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
    def from_headers(
        cls, headers: Mapping[str, str], now: dt.datetime | None = None
    ) -> RateLimitInfo | None:
        """None when the response carries no rate-limit header at all. Anthropic's
        ``anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}`` (the reset an
        RFC 3339 time) are read when the ``x-ratelimit-*`` ones are absent."""
        if any(name.startswith(ANTHROPIC_PREFIX) for name in headers):
            return cls._from_anthropic(headers, now or dt.datetime.now(dt.UTC))
        info = cls(
            limit_requests=_int(headers.get("x-ratelimit-limit-requests")),
            limit_tokens=_int(headers.get("x-ratelimit-limit-tokens")),
            remaining_requests=_int(headers.get("x-ratelimit-remaining-requests")),
            remaining_tokens=_int(headers.get("x-ratelimit-remaining-tokens")),
            reset_requests_s=_duration(headers.get("x-ratelimit-reset-requests")),
            reset_tokens_s=_duration(headers.get("x-ratelimit-reset-tokens")),
        )
        return info if info.model_dump(exclude_none=True) else None

    @classmethod
    def _from_anthropic(cls, headers: Mapping[str, str], now: dt.datetime) -> RateLimitInfo:
        def read(kind: str, part: str) -> str | None:
            return headers.get(f"{ANTHROPIC_PREFIX}{kind}-{part}")

        return cls(
            limit_requests=_int(read("requests", "limit")),
            limit_tokens=_int(read("tokens", "limit")),
            remaining_requests=_int(read("requests", "remaining")),
            remaining_tokens=_int(read("tokens", "remaining")),
            reset_requests_s=_until(read("requests", "reset"), now),
            reset_tokens_s=_until(read("tokens", "reset"), now),
        )


ANTHROPIC_PREFIX = "anthropic-ratelimit-"


def _until(text: str | None, now: dt.datetime) -> float | None:
    """Seconds from ``now`` to an RFC 3339 time (0 when it is past; None if unreadable)."""
    if text is None:
        return None
    try:
        when = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - now).total_seconds())


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
